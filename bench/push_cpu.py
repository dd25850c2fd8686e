"""A routed push's CPU in one web process, without HTTP or load: `python -m bench.push_cpu [N] [--profile OUT]`.

Calls the WSGI application directly with the single-ingest phase's body (the seed, a unique
message_id and order number each) against a store and one subscription that wants it, as the
bench's hub side does, on the DATABASE_URL and REDIS_URL of the environment (production shape:
PostgreSQL, Redis cache and broker, multiprocess metrics). No worker runs, so each push finds its
endpoint's wake-up pending, as in the bench. Prints the process CPU per push (time.process_time)
and its PostgreSQL backend's (as bench.pump_cpu reads it), medians of `--rounds` rounds (5); with
--profile, writes a cProfile of one more round to OUT.

On a shared machine CPU time moves with the load; instructions much less. Under valgrind, a run of
N pushes less a run of none is the instructions of N pushes:
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
    python -m bench.push_cpu N --rounds 1      (and again with 0)
valgrind runs the process so slowly that the second-long caches (HUB_STORE_AUTH_CACHE_SECONDS,
HUB_SUBSCRIPTIONS_CACHE_SECONDS, HUB_PUMP_COALESCE_SECONDS) expire every few pushes and move the
count by a few per cent between runs: set them to 100000 for such runs.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.plan import SEED


def backend_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds; NaN when it cannot be read (another machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pid() -> int | None:
    """The PostgreSQL backend serving this thread's connection; None on another database."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _environ(body: bytes, token: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/events",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def tool_args(argv: list[str], *, count: int, name: str) -> tuple[int, str | None, int]:
    """An in-process CPU tool's `[N] [--rounds R] [--profile OUT]`, and the production shape's
    environment it runs in (settings, multiprocess metrics, a rate limit it never meets, INFO logs)."""
    if argv and argv[0].isdigit():
        count = int(argv[0])
    profile_to = argv[argv.index("--profile") + 1] if "--profile" in argv else None
    rounds_count = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 5
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix=f"{name}-"))
    os.environ.setdefault("HUB_RATE_LIMIT_WRITE", "100000000/second")
    os.environ["LOG_LEVEL"] = os.environ.get("LOG_LEVEL", "INFO")
    return count, profile_to, rounds_count


def tool_subscriber(name: str, tag: str, url: str) -> tuple[str, Any]:
    """A store of its own (named by `tag`) and the one subscription `name` to `url` wanting its
    pushes, the tool's previous one replaced: (the store's token, subscription). After django.setup()."""
    from events.models import Store
    from routing.models import Subscription

    store = Store(name=f"{name}-{tag}")
    token = store.token_set_new()
    store.save()
    Subscription.objects.filter(name=name).delete()
    subscription = Subscription.objects.create(name=name, url=url, message_types=["order:new"], max_in_flight=4)
    return token, subscription


def tool_start(*, as_worker: bool = False) -> tuple[int, subprocess.Popen[bytes], Any]:
    """The tool's subscriber on a free port and the hub's WSGI app, its log lines formatted and
    written as in a worker, to nowhere: (port, subscriber process, app). After django.setup().
    `as_worker`: what is loaded by then is frozen out of the collector's walks, as a worker's pool
    process does at its start (integrator.celery)."""
    import logging

    from django.core.wsgi import get_wsgi_application

    from bench.stack import free_port
    from integrator.memory import loaded_objects_freeze

    port = free_port()
    subscriber = subprocess.Popen(
        [sys.executable, "-m", "bench.subscriber", "--port", str(port)], stdout=subprocess.DEVNULL
    )
    app = get_wsgi_application()  # configures logging again
    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    if as_worker:
        loaded_objects_freeze()
    return port, subscriber, app


def tool_stop(subscriber: Any) -> None:
    """Stop a tool's subscriber process and purge the tool's own queue (CELERY_QUEUE) of the
    wake-ups its pushes and pumps published. After django.setup()."""
    from tests.live import queue_purge

    subscriber.terminate()
    subscriber.wait()
    queue_purge(os.environ["CELERY_QUEUE"])


def wsgi_call(app: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    """One request through the WSGI application, read whole: its status line and body."""
    statuses: list[str] = []
    chunks = app(environ, lambda status, headers, *_: statuses.append(status))
    body = b"".join(chunks)
    getattr(chunks, "close", lambda: None)()
    return statuses[0], body


def main(argv: list[str]) -> None:
    count, profile_to, rounds_count = tool_args(argv, count=500, name="push-cpu")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    tag = f"cpu{os.getpid()}"
    token, subscription = tool_subscriber("push-cpu", tag, "http://127.0.0.1:9/push-cpu")
    seed = json.loads(Path(SEED).read_text())
    number = seed["payload"]["order"]["number"]
    spaced = json.dumps(seed).encode()
    at = spaced.index(b'"number": "%s"' % number.encode()) + len(b'"number": "')
    head, tail = spaced[1:at], spaced[at + len(number) :]
    serial = iter(range(10**9))

    def push() -> None:
        n = next(serial)
        body = b'{"message_id": "%s-%d", ' % (tag.encode(), n) + head + b"R%s-%d" % (tag.encode(), n) + tail
        status, answer = wsgi_call(app, _environ(body, token))
        if not status.startswith("202"):
            raise SystemExit(f"push answered {status}: {answer!r}")

    try:
        for _ in range(100):  # warm: caches, prepared statements, connections
            push()
        rounds, backend_rounds = [], []
        for _ in range(rounds_count):
            backend = backend_pid()
            backend_started = backend_cpu(backend) if backend else float("nan")
            started = time.process_time()
            for _ in range(count):
                push()
            rounds.append((time.process_time() - started) / max(count, 1) * 1e6)
            # The same backend only: the connection kept (DB_CONN_MAX_AGE) through the round.
            same = backend is not None and backend_pid() == backend
            spent = backend_cpu(backend) - backend_started if same else float("nan")
            backend_rounds.append(spent / max(count, 1) * 1e6)
        each = ", ".join(f"{r:.0f}" for r in rounds)
        print(f"CPU per push: {statistics.median(rounds or [0]):.0f} µs (rounds: {each})")
        each = ", ".join(f"{r:.0f}" for r in backend_rounds)
        print(f"PostgreSQL backend CPU per push: {statistics.median(backend_rounds or [0]):.0f} µs (rounds: {each})")
        if profile_to:
            profiler = cProfile.Profile(time.process_time)  # CPU, not waits on PostgreSQL or Redis
            profiler.enable()
            for _ in range(count):
                push()
            profiler.disable()
            profiler.dump_stats(profile_to)
    finally:
        from routing.models import Delivery

        Delivery.objects.filter(subscription=subscription).delete()
        subscription.delete()


if __name__ == "__main__":
    main(sys.argv[1:])
