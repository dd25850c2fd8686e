"""Slow clients against gunicorn with gunicorn.conf.py, as every shipped way of running it: a client
sending slowly takes no thread from anyone else. Waits are generous timeouts; nothing is timed."""

from __future__ import annotations

import json
import select
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from integrator.gunicorn_worker import BUFFER_BUDGET_BODIES, RequestGathering
from tests.factories import StoreFactory
from tests.ops.conftest import gunicorn_start, http_get, hub_env

# Long enough that no slow client below is timed out by the server while the test runs.
GENEROUS = 60.0


@pytest.fixture
def hub(python) -> Iterator[int]:
    env = hub_env(LOG_LEVEL="WARNING", HUB_REQUEST_READ_SECONDS="300")
    server, port = gunicorn_start(python, env, "--workers=2")
    try:
        http_get(f"http://127.0.0.1:{port}/healthz", time.monotonic() + GENEROUS)
        yield port
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
        assert server.returncode == 0, err.decode()[-2000:]


def _slow_push(port: int, *, token: str | None, sent: int = 1, length: int = 1000) -> socket.socket:
    """Headers of a `length`-byte push, and only `sent` bytes of its body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + b" " * sent)  # JSON may start with white space
    return sock


def _slow_headers(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS)
    sock.sendall(b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    return sock


def _reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one whole reply (status, headers, body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a reply: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _still_waiting(sock: socket.socket) -> bool:
    """The server has neither answered nor closed this connection."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def _push(port: int, token: str, message_id: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/events",
        data=json.dumps({"message": "order:new", "message_id": message_id, "payload": {}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    return urllib.request.urlopen(request, timeout=GENEROUS).status


def _healthz(port: int) -> int:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=GENEROUS).status


@pytest.mark.django_db(transaction=True)
def test_pushes_without_a_token_are_refused_from_their_headers_while_their_bodies_trickle(hub):
    """More slow anonymous pushes than the server has threads: each gets its 401 at once, without
    the server waiting for its body, and the connection is closed instead of drained."""
    port = hub
    clients = [_slow_push(port, token=None) for _ in range(32)]
    try:
        for sock in clients:
            status, headers, body = _reply(sock)
            assert status == 401, body
            assert headers["connection"] == "close"
            assert json.loads(body)["error"] == "unauthorized"
        # Still held open on our side, and /healthz answers.
        assert _healthz(port) == 200
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.django_db(transaction=True)
def test_64_slow_clients_do_not_keep_other_stores_or_healthz_waiting(hub):
    """Slow bodies with a valid token, with a wrong one, with none, and slow headers: 64 clients
    hold connections (eight times the threads of the two workers) while another store pushes."""
    port = hub
    slow_store, other_store = StoreFactory(), StoreFactory()
    clients: dict[str, list[socket.socket]] = {"valid token": [], "wrong token": [], "no token": [], "headers": []}
    try:
        for _ in range(16):
            clients["valid token"].append(_slow_push(port, token=slow_store.token))
            clients["wrong token"].append(_slow_push(port, token="hub_not-a-token"))
            clients["no token"].append(_slow_push(port, token=None))
            clients["headers"].append(_slow_headers(port))

        assert _push(port, other_store.token, "while-slow-1") == 202
        assert _healthz(port) == 200
        assert _push(port, other_store.token, "while-slow-2") == 202

        # All of that happened while the slow clients were still connected and unanswered (those
        # without a token were answered from their headers, and closed).
        for kind in ("valid token", "wrong token", "headers"):
            assert all(_still_waiting(sock) for sock in clients[kind]), kind
        assert {_reply(sock)[0] for sock in clients["no token"]} == {401}

        # A slow body that does arrive in the end is served like any other.
        sock = clients["valid token"][0]
        body = json.dumps({"message": "order:new", "message_id": "slow", "payload": {}}).encode()
        sock.sendall(body.ljust(999, b" "))
        status, _, reply = _reply(sock)
        assert status == 202, reply
        assert json.loads(reply)["message_id"] == "slow"
    finally:
        for sock in [s for group in clients.values() for s in group]:
            sock.close()


@pytest.mark.django_db(transaction=True)
def test_a_request_that_trickles_past_the_deadline_gets_408(python):
    """The deadline is wall-clock: a client that keeps sending a byte every few hundredths of a
    second (so a socket timeout would never fire) is cut off when its time is up."""
    env = hub_env(LOG_LEVEL="WARNING", HUB_REQUEST_READ_SECONDS="1")
    server, port = gunicorn_start(python, env, "--workers=1")
    try:
        http_get(f"http://127.0.0.1:{port}/healthz", time.monotonic() + GENEROUS)
        sock = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS)
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Padding: " + b"a" * 3000 + b"\r\n\r\n"
        sent = 0
        reply = b""
        sock.settimeout(0.02)
        # The whole request would take a minute at this pace.
        while sent < len(request):
            try:
                sock.send(request[sent : sent + 1])
                sent += 1
                reply += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if b"\r\n\r\n" in reply:
                break
        sock.settimeout(GENEROUS)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b'"request_timeout"' in reply
        assert sent < len(request) // 2  # cut off long before the request was complete
        sock.close()
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.django_db(transaction=True)
def test_what_slow_bodies_may_hold_in_memory_is_bounded(python):
    """A worker holds at most BUFFER_BUDGET_BODIES bodies' worth of unfinished requests: past it a
    request that needs more is refused (503) and closed, and the server still answers."""
    store = StoreFactory()
    env = hub_env(LOG_LEVEL="WARNING", HUB_REQUEST_READ_SECONDS="300", HUB_MAX_BODY_BYTES="2000")
    server, port = gunicorn_start(python, env, "--workers=1")
    clients = []
    try:
        http_get(f"http://127.0.0.1:{port}/healthz", time.monotonic() + GENEROUS)
        for _ in range(BUFFER_BUDGET_BODIES + 8):
            # Nearly all of a body as large as allowed: more than the budget in all.
            clients.append(_slow_push(port, token=store.token, sent=1999, length=2000))
        answered, _, _ = select.select(clients, [], [], GENEROUS)
        assert answered, "no slow client was refused"
        status, _, body = _reply(answered[0])
        assert (status, json.loads(body)["error"]) == (503, "server_busy")
        assert _healthz(port) == 200
    finally:
        for sock in clients:
            sock.close()
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.django_db(transaction=True)
def test_a_stopping_server_does_not_wait_for_slow_clients(python):
    """On TERM, requests still arriving are refused (503) rather than waited for until the graceful
    timeout (here far longer than the wait below)."""
    store = StoreFactory()
    env = hub_env(LOG_LEVEL="WARNING", HUB_REQUEST_READ_SECONDS="300")
    server, port = gunicorn_start(python, env, "--workers=1", "--graceful-timeout=300")
    try:
        http_get(f"http://127.0.0.1:{port}/healthz", time.monotonic() + GENEROUS)
        sock = _slow_push(port, token=store.token)
        assert _healthz(port) == 200  # accepted after the slow client: that one is being received
        server.terminate()
        status, _, body = _reply(sock)
        assert (status, json.loads(body)["error"]) == (503, "server_busy")
        server.wait(timeout=GENEROUS)
        sock.close()
    finally:
        server.kill()
        server.communicate(timeout=30)


# The worker's framing: when a request's bytes are enough to hand it to a thread ------------------

HEAD = b"POST /events HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n"


def _gathering(data: bytes, max_body: int = 100) -> RequestGathering:
    return RequestGathering(data, deadline=0.0, max_body=max_body, max_head=1000)


def test_a_sized_body_is_gathered_whole():
    gathering = _gathering(HEAD + b"Content-Length: 5\r\n\r\nab")
    assert not gathering.ready
    gathering.feed(b"cde")
    assert gathering.ready and gathering.body_complete


def test_a_request_without_a_sender_is_handed_over_without_its_body():
    gathering = _gathering(b"POST /events HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
    assert gathering.ready and not gathering.body_complete


def test_a_body_over_the_cap_is_handed_over_without_its_body():
    gathering = _gathering(HEAD + b"Content-Length: 101\r\n\r\n")
    assert gathering.ready and not gathering.body_complete


@pytest.mark.parametrize("lengths", [b"Content-Length: 5\r\nContent-Length: 6\r\n", b"Content-Length: -1\r\n"])
def test_a_malformed_length_is_left_to_gunicorn(lengths):
    gathering = _gathering(HEAD + lengths + b"\r\n")
    assert gathering.ready and not gathering.body_complete


def test_a_chunked_body_is_gathered_to_its_last_chunk_and_trailers():
    gathering = _gathering(HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert not gathering.ready
    gathering.feed(b"2;ext=1\r\nde\r\n0\r\n")
    assert not gathering.ready
    gathering.feed(b"Trailer: x\r\n\r\n")
    assert gathering.ready and gathering.body_complete


def test_chunks_over_the_cap_are_handed_over():
    gathering = _gathering(HEAD + b"Transfer-Encoding: chunked\r\n\r\n65\r\n")
    assert gathering.ready and not gathering.body_complete


def test_a_head_without_an_end_is_too_large_past_the_limit():
    gathering = _gathering(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200)
    assert gathering.head_too_large and not gathering.ready


def test_a_request_without_a_body_is_ready_at_the_end_of_its_head():
    assert _gathering(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n").ready
