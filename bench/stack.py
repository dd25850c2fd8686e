"""The stack under test: a private database, queue and var directory, the processes (web, worker,
subscriber), and their memory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.plan import HOST, ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Environment: a private database, queue and var directory ----------------------------------


def bench_environment(smoke: bool) -> dict[str, str]:
    env = dict(os.environ)
    var = ROOT / "var" / ("bench-smoke" if smoke else "bench")
    shutil.rmtree(var, ignore_errors=True)
    (var / "prometheus").mkdir(parents=True)
    suffix = "_bench_smoke" if smoke else "_bench"
    source = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    if source:
        parts = urlsplit(source)
        name = parts.path.lstrip("/") or "hub"
        if not os.environ.get("BENCH_DATABASE_URL"):
            name += suffix
        env["DATABASE_URL"] = urlunsplit(parts._replace(path="/" + name))
        database_recreate(env["DATABASE_URL"])
    env.update(
        HUB_VAR_DIR=str(var),
        CELERY_QUEUE=f"bench-{os.getpid()}",
        HUB_BENCH_BASELINE="1",
        # The benchmark is one store pushing as fast as it can; the default limit would cut it off.
        HUB_RATE_LIMIT_WRITE="100000000/second",
        HUB_ALLOW_PRIVATE_DESTINATIONS="1",
        PROMETHEUS_MULTIPROC_DIR=str(var / "prometheus"),
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "INFO"),
        DEBUG="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HUB_ENV", None)
    return env


def database_recreate(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def django_setup(env: dict[str, str]) -> None:
    for key in ("DATABASE_URL", "HUB_VAR_DIR", "CELERY_QUEUE", "HUB_BENCH_BASELINE", "HUB_ALLOW_PRIVATE_DESTINATIONS"):
        if key in env:
            os.environ[key] = env[key]
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


# --- The peer: django-webhook in its own project (bench/peer) ----------------------------------


def peer_environment(env: dict[str, str]) -> dict[str, str]:
    """The peer's processes' environment: its settings, a fresh `<bench database>_peer` beside the
    bench's (or SQLite under the var directory), the same Redis with a private queue."""
    peer = dict(env, DJANGO_SETTINGS_MODULE="bench.peer.settings", CELERY_QUEUE=f"bench-peer-{os.getpid()}")
    if env.get("DATABASE_URL"):
        parts = urlsplit(env["DATABASE_URL"])
        peer["DATABASE_URL"] = urlunsplit(parts._replace(path=parts.path + "_peer"))
        database_recreate(peer["DATABASE_URL"])
    return peer


def hub_threads() -> int:
    """The threads per web worker of the hub's gunicorn.conf.py, which the peer gets too: like for like."""
    namespace: dict[str, object] = {}
    exec(compile((ROOT / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), namespace)
    return int(namespace["threads"])  # type: ignore[call-overload]


def peer_start(procs: Processes, env: dict[str, str], *, port: int, workers: int, webhook_url: str) -> None:
    """Tables and one webhook subscribed to the peer's events (python -m bench.peer), then gunicorn
    in the hub's shape: the same workers and threads as the hub's gunicorn.conf.py, access log on."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "bench.peer", webhook_url], cwd=ROOT, env=env, capture_output=True
    )
    if done.returncode:
        raise SystemExit(
            f"bench: the peer's setup failed:\n{done.stdout.decode()[-2000:]}{done.stderr.decode()[-3000:]}"
        )
    procs.start(
        "peer",
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "bench.peer.wsgi:application",
            "--config",
            "bench/peer/gunicorn.conf.py",
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(hub_threads()),
            "--access-logfile",
            "-",
            "--graceful-timeout",
            "10",
        ],
        env=env,
    )


def queue_purge(env: dict[str, str]) -> None:
    """Drop a private queue the bench is done with, and Kombu's keys for it: the peer's is never
    consumed (its messages each carry an event's whole payload, thousands a phase), and the hub's
    keeps what the routed single-ingest pushes woke when no phase starts the worker."""
    queue = env["CELERY_QUEUE"]
    if env.get("REDIS_URL"):
        import redis

        client = redis.Redis.from_url(env["REDIS_URL"])
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.close()


# --- Processes ------------------------------------------------------------------------------


class Processes:
    def __init__(self, env: dict[str, str], var: Path) -> None:
        self.env = env
        self.var = var
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logfile = open(self.var / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env or self.env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
        logfile.close()
        self.running[name] = process
        return process

    def log_text(self, name: str) -> str:
        try:
            return (self.var / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check(self, name: str) -> None:
        process = self.running[name]
        if process.poll() is not None:
            raise SystemExit(f"bench: {name} exited ({process.returncode}):\n{self.log_text(name)[-3000:]}")

    def stop(self, name: str) -> None:
        process = self.running.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: gave up waiting for {what} after {timeout:g}s")
        time.sleep(interval)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def connected_to(pids: list[int], port: int) -> list[int]:
    """Those of `pids` with a TCP connection established to `port` on this host (a Celery pool
    process with a request on the wire to the subscriber, say; never the embedded beat)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except FileNotFoundError:
            continue
        inodes |= {row[9] for row in rows if int(row[2].rsplit(":", 1)[1], 16) == port and row[3] == "01"}
    found = []
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except (FileNotFoundError, PermissionError):
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            found.append(pid)
    return found


class RssSampler(threading.Thread):
    """Largest RSS seen per role ('web', 'worker'), and the first (idle) sample as the baseline."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.roles: dict[str, int] = {}
        self.idle: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.stopping = threading.Event()

    def watch(self, role: str, parent_pid: int) -> None:
        self.roles[role] = parent_pid

    def sample(self) -> None:
        for role, parent in list(self.roles.items()):
            # Each process on its own: the target is per worker process. For gunicorn the master
            # only supervises; the children serve. For Celery the main process consumes and the
            # pool children send, so both count.
            pids = children(parent) + ([parent] if role == "worker" else [])
            sizes = [rss_mb(pid) for pid in pids]
            sizes = [s for s in sizes if s]
            if not sizes:
                continue
            self.idle.setdefault(role, max(sizes))
            self.peak[role] = max(self.peak.get(role, 0.0), *sizes)

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.sample()


# --- The measurements -----------------------------------------------------------------------
