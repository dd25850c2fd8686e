"""Real things for tests to talk to: an HTTP subscriber on a local port, a Celery worker process,
and the failures to put between them (a private redis-server to kill, a TCP proxy to cut).

Plain classes, so any test module can use them; tests/conftest.py wraps them in fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, message: str = "") -> Any:
    """Poll until `predicate()` is truthy and return its value; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or predicate}")
        time.sleep(interval)


def queue_purge(queue: str) -> None:
    """Drop whatever an earlier run left on a Celery queue and its backlog lane, before a test
    worker starts on it."""
    from integrator.celery import app
    from routing.wakeup import BACKLOG_SUFFIX

    with app.connection_for_write() as conn:
        for name in (queue, f"{queue}{BACKLOG_SUFFIX}"):
            try:
                conn.default_channel.queue_purge(name)
            except Exception:  # noqa: BLE001 - a queue that does not exist yet has nothing to purge
                pass


def queue_drain(queue: str) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """The messages waiting on a Celery queue, taken off it in order: (task, args, kwargs) each."""
    from integrator.celery import app

    taken: list[tuple[str, list[Any], dict[str, Any]]] = []
    with app.connection_for_write() as conn:
        queue_ = conn.SimpleQueue(queue)
        try:
            while True:
                try:
                    message = queue_.get(block=False)
                except queue_.Empty:
                    return taken
                args, kwargs, _ = message.decode()
                taken.append((message.headers["task"], args, kwargs))
                message.ack()
        finally:
            queue_.close()


def free_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Reply:
    """What the subscriber answers to one request."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # A trickle: one byte every `drip_every` seconds for `drip_seconds`, in the body (after the
    # status and headers) or in the headers (after the status line), then the rest at once.
    drip_every: float = 0.0
    drip_seconds: float = 0.0
    drip_in: str = "body"

    @classmethod
    def ok(cls, **reply: Any) -> Reply:
        return cls(200, json=reply or {"ok": True})

    @classmethod
    def error(cls, status: int = 500, **headers: str) -> Reply:
        return cls(status, json={"error": "boom"}, headers=headers)

    @classmethod
    def not_json(cls) -> Reply:
        return cls(200, body=b"<html>thanks</html>", headers={"Content-Type": "text/html"})

    @classmethod
    def slow(cls, seconds: float) -> Reply:
        return cls(200, json={"ok": True}, delay=seconds)

    @classmethod
    def drip(cls, *, every: float = 0.25, seconds: float = 60.0, during: str = "body") -> Reply:
        """200, then one byte every `every` seconds for `seconds` (during "body" or "headers"):
        each read gets something long before any socket timeout, the whole takes `seconds`."""
        return cls(200, json={"ok": True}, drip_every=every, drip_seconds=seconds, drip_in=during)

    @classmethod
    def gone(cls) -> Reply:
        return cls(410, json={"error": "gone"})

    @classmethod
    def too_many(cls, retry_after: str) -> Reply:
        return cls(429, json={"error": "slow down"}, headers={"Retry-After": retry_after})


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Subscriber:
    """A threaded HTTP server on a free 127.0.0.1 port. A test programs the replies per path
    (a list played in order, the last one repeating; default 200 {"ok": true}) and reads back
    every request received."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._programs: dict[str, list[Reply]] = {}
        self._responders: dict[str, Callable[[Received], Reply]] = {}
        self._received: list[Received] = []
        # Requests being answered now, and the most at once, per path.
        self._active: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        # How each drip to a path ended: "cut" (the hub hung up) or "finished".
        self._drips: dict[str, list[str]] = {}
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="subscriber", daemon=True)

    def start(self) -> Subscriber:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def program(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._programs[path] = list(replies)

    def respond_with(self, path: str, responder: Callable[[Received], Reply]) -> None:
        """Answer each request to `path` with what `responder` decides from it (called under the
        subscriber's lock, so it may keep its own tally without one)."""
        with self._lock:
            self._responders[path] = responder

    def reset(self) -> None:
        with self._lock:
            self._programs.clear()
            self._responders.clear()
            self._received.clear()
            self._peak.clear()
            self._drips.clear()

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def peak(self, path: str) -> int:
        """The most requests to `path` the subscriber was answering at one time."""
        with self._lock:
            return self._peak.get(path, 0)

    def drips(self, path: str) -> list[str]:
        """How each drip to `path` that has ended ended: "cut" or "finished"."""
        with self._lock:
            return list(self._drips.get(path, []))

    def wait_for(self, path: str, count: int = 1, timeout: float = 20.0) -> list[Received]:
        wait_until(lambda: len(self.received(path)) >= count, timeout, message=f"{count} request(s) to {path}")
        return self.received(path)

    def _next_reply(self, path: str, received: Received) -> Reply:
        with self._lock:
            responder = self._responders.get(path)
            if responder is not None:
                return responder(received)
            program = self._programs.get(path)
            if not program:
                return Reply.ok()
            return program.pop(0) if len(program) > 1 else program[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The head and the body go out as two writes: with Nagle's algorithm the body would wait
            # for the client's delayed ACK of the head, on every request of a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                received = Received(self.command, path, dict(self.headers.items()), body)
                with subscriber._lock:
                    subscriber._received.append(received)
                    subscriber._active[path] = active = subscriber._active.get(path, 0) + 1
                    subscriber._peak[path] = max(subscriber._peak.get(path, 0), active)
                try:
                    self._answer(path, subscriber._next_reply(path, received))
                finally:
                    with subscriber._lock:
                        subscriber._active[path] -= 1

            def _answer(self, path: str, reply: Reply) -> None:
                if reply.delay and subscriber._stopping.wait(reply.delay):
                    return
                data = reply.body if reply.body is not None else json.dumps(reply.json).encode()
                try:
                    if reply.drip_every:
                        self._drip(path, reply, data)
                        return
                    self.send_response(reply.status)
                    headers = {"Content-Type": "application/json", **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the hub gave up waiting (a timeout test): nothing left to say

            def _drip(self, path: str, reply: Reply, data: bytes) -> None:
                count = max(1, int(reply.drip_seconds / reply.drip_every))
                status = f"HTTP/1.1 {reply.status} OK\r\n".encode()
                if reply.drip_in == "headers":
                    head, trickle = status + b"X-Drip: ", b"a" * count
                    tail = f"\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
                else:
                    # The body is the JSON after `count` spaces of leading whitespace.
                    length = count + len(data)
                    head = status + f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()
                    trickle, tail = b" " * count, data
                outcome = "cut"
                try:
                    self.wfile.write(head)
                    for index in range(count):
                        if subscriber._stopping.wait(reply.drip_every):
                            return
                        self.wfile.write(trickle[index : index + 1])
                    self.wfile.write(tail)
                    outcome = "finished"
                except OSError:
                    pass  # the hub hung up
                finally:
                    self.close_connection = True
                    with subscriber._lock:
                        subscriber._drips.setdefault(path, []).append(outcome)

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _handle

        return Handler


class Worker:
    """`celery -A integrator worker -B` in a subprocess, on the given database and broker, with a
    short sweeper interval (`beat=False`: no embedded beat, for a run with a beat of its own, as
    compose has). Its output goes to a log file that a failing test can read."""

    # Workers started and not stopped: they all sweep the same database, so a test that must be
    # the only one doing so pauses the others (workers_paused).
    alive: ClassVar[list[Worker]] = []

    def __init__(
        self,
        *,
        env: dict[str, str],
        log_path: Path,
        queue: str,
        pool: str = "threads",
        concurrency: int = 4,
        beat: bool = True,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.queue = queue
        self.pool = pool
        self.concurrency = concurrency
        self.beat = beat
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child for its whole life
        schedule = self.log_path.with_suffix(".beat")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "integrator",
                "worker",
                *(["-B", "-s", str(schedule)] if self.beat else []),
                "-Q",
                self.queue,
                f"--pool={self.pool}",
                f"--concurrency={self.concurrency}",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        Worker.alive.append(self)
        wait_until(self._ready, timeout=60, interval=0.2, message=f"celery worker ready (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"celery worker exited with {self.process.returncode}:\n{self.log()}")
        return "ready." in self.log()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL the worker and everything it started, as a crash or the OOM killer would."""
        if self in Worker.alive:
            Worker.alive.remove(self)
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self in Worker.alive:
            Worker.alive.remove(self)
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # Its pool children and beat may outlive it for a moment, still connected to the test
        # database, which pytest-django drops at the end of the session.
        deadline = time.monotonic() + 10
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(self.process.pid):
            os.killpg(self.process.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def workers_paused(keep: Sequence[Worker] = ()) -> Iterator[list[Worker]]:
    """Stop every running test worker but `keep` for the duration, then start them again: for a
    test whose own workers must be the only ones sweeping the shared test database."""
    paused = [w for w in Worker.alive if w.process is not None and w.process.poll() is None and w not in keep]
    for worker in paused:
        worker.stop()
    try:
        yield paused
    finally:
        for worker in paused:
            worker.start()


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RedisServer:
    """A private `redis-server` on its own port, to kill and bring back without touching anyone
    else's Redis. Nothing is persisted: a restarted server is empty, as after a real crash."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: port_accepts(self.port), timeout=20, message=f"redis-server on {self.port}")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        wait_until(lambda: not port_accepts(self.port), timeout=10, message=f"redis-server on {self.port} gone")


class TcpProxy:
    """A TCP relay from a free local port to `upstream` that a test can cut (every connection
    dropped, new ones refused) and restore, to take a server away without stopping it."""

    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()
        return self

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        for sock in [listener, *sockets]:
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), name="proxy-pump", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def pump_for(delivery_id: int) -> str | None:
    """What a worker does for the endpoint of this delivery (routing.tasks): its due deliveries sent
    until none is left; the verdict of this one, None when it was not sent."""
    from routing.models import Delivery
    from routing.pump import deliveries_pump

    subscription_id = Delivery.objects.filter(pk=delivery_id).values_list("subscription_id", flat=True).first()
    if subscription_id is None:
        return None
    return deliveries_pump(subscription_id=subscription_id).verdicts.get(delivery_id)


class OrdersSource:
    """A Spree-era pull endpoint (endpoint_base and the integrations built on it) as a responder
    for Subscriber.respond_with: it answers `get_orders` with the orders changed since the `since`
    parameter it was sent, `page_size` at a time. A page with more after it is HTTP 206 with the
    next `page`; the last page is 200 with the new `since` and `page` back to 1 (ShipStation-style).
    `fail_next(n)` answers the next n requests 500. Every request is kept with what it asked."""

    def __init__(self, *, page_size: int = 100) -> None:
        self.page_size = page_size
        self.orders: dict[str, dict[str, Any]] = {}
        self.clock = 0
        self.failures = 0
        # (message_id, since, page) of each request, in order.
        self.asked: list[tuple[str, str | None, int]] = []

    def add(self, number: str, **fields: Any) -> dict[str, Any]:
        """Add or change an order; it is returned to pulls since before this moment."""
        self.clock += 1
        order = {**self.orders.get(number, {}), "id": number, "number": number, **fields}
        order["updated_at"] = f"2026-01-01T00:{self.clock // 60:02d}:{self.clock % 60:02d}Z"
        self.orders[number] = order
        return order

    def fail_next(self, count: int = 1) -> None:
        self.failures = count

    def __call__(self, received: Received) -> Reply:
        body = received.json()
        parameters = {p["name"]: p["value"] for p in body.get("payload", {}).get("parameters", [])}
        since = parameters.get("since")
        page = int(parameters.get("page") or 1)
        self.asked.append((body.get("message_id"), since, page))
        if self.failures:
            self.failures -= 1
            return Reply.error(500)
        changed = sorted(
            (o for o in self.orders.values() if since is None or o["updated_at"] > since),
            key=lambda o: o["updated_at"],
        )
        start = (page - 1) * self.page_size
        chunk = changed[start : start + self.page_size]
        if start + self.page_size < len(changed):
            return Reply(206, json={"orders": chunk, "parameters": [{"name": "page", "value": page + 1}]})
        returned = [{"name": "page", "value": 1}]
        if changed:
            returned.append({"name": "since", "value": changed[-1]["updated_at"]})
        return Reply(200, json={"orders": chunk, "parameters": returned})


@contextmanager
def https_endpoint(directory: Path, name: str) -> Iterator[tuple[int, Path]]:
    """An HTTPS endpoint on 127.0.0.1 (HTTP/1.1, kept alive) answering every POST `200 {"ok": true}`,
    with a self-signed certificate for `name` (an IP address or a host name) written under
    `directory`: (its port, the certificate's file, to trust)."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alt = x509.DNSName(name)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], cert_file
    finally:
        server.shutdown()
        server.server_close()
