"""A pump's CPU per delivery in one worker process, without Celery: `python -m bench.pump_cpu [N] [--profile OUT]`.

N deliveries (1,000) of the bench's seed event are queued to one subscription served by
bench.subscriber (an instant endpoint, in a process of its own), then one deliveries_pump sends
them all in-process, as a worker's task does, on the DATABASE_URL and REDIS_URL of the
environment (production shape: PostgreSQL, Redis broker, multiprocess metrics, the JSON log line
of each outcome at INFO, written to /dev/null, what is loaded at the start frozen out of the cyclic
collector's walks as a worker's pool process does). Prints, as the median of `--rounds` rounds
(5), and the least of them (the round least disturbed on a shared machine):

- the process CPU per delivery (time.process_time),
- the PostgreSQL backend's CPU per delivery (its /proc/<pid>/stat, readable when PostgreSQL runs
  on this machine as a user this one may read), and the statements the pump sent per delivery.

With --profile, writes a cProfile (CPU clock) of one more round to OUT. Under cachegrind, a run of
N less a run of 0 (each `--rounds 1`) is the instructions of N deliveries: both warm by the same 200.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.plan import SEED
from bench.push_cpu import (
    _environ,
    backend_cpu,
    backend_pid,
    tool_args,
    tool_start,
    tool_stop,
    tool_subscriber,
    wsgi_call,
)


def main(argv: list[str]) -> None:
    count, profile_to, rounds_count = tool_args(argv, count=1000, name="pump-cpu")
    os.environ["HUB_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    # One pump sends the whole backlog: no hand-over to a next task at the budget.
    os.environ.setdefault("HUB_DELIVERY_PUMP_SECONDS", "600")
    # The helper wake-ups a full batch publishes go to a queue of their own, purged at the end.
    os.environ["CELERY_QUEUE"] = f"pump-cpu-{os.getpid()}"
    import django

    django.setup()

    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0, interactive=False)
    if connection.vendor == "postgresql":
        # Every run deletes its deliveries: without this, the next ones read past their dead rows
        # (the status refresh's index scan slows by orders of magnitude), which no hub does.
        with connection.cursor() as cursor:
            cursor.execute('VACUUM ANALYZE "routing_delivery", "routing_attempt", "events_event"')

    from routing.models import Delivery, DeliveryState
    from routing.pump import deliveries_pump

    # The outcome lines are formatted, redacted and written as in a worker, to nowhere.
    port, subscriber, app = tool_start(as_worker=True)
    tag = f"pcpu{os.getpid()}"
    token, subscription = tool_subscriber("pump-cpu", tag, f"http://127.0.0.1:{port}/d")
    seed = json.loads(Path(SEED).read_text())
    serial = iter(range(10**9))

    def queue(n: int) -> None:
        """n deliveries through the batch ingest, 100 events a request, as the bench's backlog."""
        while n > 0:
            size = min(n, 100)
            events = []
            for _ in range(size):
                k = next(serial)
                event = json.loads(json.dumps(seed))
                event["message_id"] = f"{tag}-{k}"
                event["payload"]["order"]["number"] = f"R{tag}-{k}"
                events.append(event)
            body = json.dumps(events, separators=(",", ":")).encode()
            environ = _environ(body, token)
            environ["PATH_INFO"] = "/events/batch"
            status, _ = wsgi_call(app, environ)
            if not status.startswith(("200", "202")):
                raise SystemExit(f"batch push answered {status}")
            n -= size

    statements = [0]

    def counting(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        statements[0] += 1
        return execute(sql, params, many, context)

    def pump_round(n: int, profiler: cProfile.Profile | None = None) -> tuple[float, float, float]:
        queue(n)
        if connection.vendor == "postgresql":
            # Statistics of the queued rows, as autovacuum keeps them on a running hub: planned on
            # those of the emptied tables, the claim and the foreign keys' checks scan whole tables.
            with connection.cursor() as cursor:
                cursor.execute('ANALYZE "routing_delivery", "routing_attempt", "events_event"')
        backend = backend_pid()
        statements[0] = 0
        backend_started = backend_cpu(backend) if backend else float("nan")
        started = time.process_time()
        with connection.execute_wrapper(counting), profiler or contextlib.nullcontext():
            result = deliveries_pump(subscription_id=subscription.pk)
        cpu = time.process_time() - started
        backend_spent = backend_cpu(backend) - backend_started if backend else float("nan")
        delivered = sum(1 for v in result.verdicts.values() if v == "delivered")
        if delivered != n:
            raise SystemExit(f"the pump delivered {delivered} of {n}: {set(result.verdicts.values())}")
        per = max(n, 1)  # a run of none (the cachegrind method's second run) reports its totals
        return cpu / per * 1e6, backend_spent / per * 1e6, statements[0] / per

    try:
        for _ in range(30):
            if subscriber.poll() is None and socket.socket().connect_ex(("127.0.0.1", port)) == 0:
                break
            time.sleep(0.1)
        # Warm (connections, prepared statements, caches) by the same 200 whatever the count, so
        # that a run of N less a run of none under cachegrind counts N deliveries and no more.
        pump_round(200)
        rounds = [pump_round(count) for _ in range(rounds_count)]
        worker = ", ".join(f"{r[0]:.0f}" for r in rounds)
        # The least is the one least disturbed by other processes on a shared machine.
        least = min(r[0] for r in rounds)
        worker_median = statistics.median(r[0] for r in rounds)
        print(f"worker CPU per delivery: {worker_median:.0f} µs, least {least:.0f} (rounds: {worker})")
        backend = ", ".join(f"{r[1]:.0f}" for r in rounds)
        backend_median = statistics.median(r[1] for r in rounds)
        print(f"PostgreSQL backend CPU per delivery: {backend_median:.0f} µs (rounds: {backend})")
        print(f"statements per delivery: {statistics.median(r[2] for r in rounds):.3f}")
        if profile_to:
            profiler = cProfile.Profile(time.process_time)  # CPU, not waits on PostgreSQL or the subscriber
            pump_round(count, profiler)
            profiler.dump_stats(profile_to)
    finally:
        tool_stop(subscriber)
        Delivery.objects.filter(subscription=subscription).exclude(state=DeliveryState.DELIVERED).delete()
        Delivery.objects.filter(subscription=subscription).delete()
        subscription.delete()


if __name__ == "__main__":
    main(sys.argv[1:])
