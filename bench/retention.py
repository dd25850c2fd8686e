"""What retention costs on PostgreSQL: one range of ids holding ROWS events (each with a delivered
delivery and an attempt) dropped by ops.partitions, against a DELETE of the same rows.

    DATABASE_URL=postgres://root@127.0.0.1:5432/hub_x .venv/bin/python -m bench.retention [ROWS]

Recreates `<database>_retention` next to the one named, and drops it at the end. The rows are
written by generate_series with a compact payload (docs/storage.md)."""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    url = os.environ["DATABASE_URL"]
    base, _, name = url.rpartition("/")
    scratch = f"{name}_retention"
    os.environ["DATABASE_URL"] = f"{base}/{scratch}"
    # One range holds the day: its events, their deliveries and attempts share the id space.
    os.environ["HUB_PARTITION_SPAN"] = str(2 * rows + 1_000)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
        admin.execute(f'CREATE DATABASE "{scratch}"')
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        results = {}
        for way in os.environ.get("BENCH_RETENTION_WAYS", "drop,delete,drop,delete").split(","):
            fill(rows)
            results.setdefault(way, []).append(measure(way))
            print(f"{way}: {results[way][-1]:.3f} s  (load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')


def fill(rows: int) -> None:
    """ROWS events a week old in the first range (odd ids), each with a delivered delivery (the
    next even id) and one attempt; 10 of them failed, which retention must keep. Then the next
    range, and the sequence moved into it."""
    from django.db import connection

    from events.models import Store
    from infra import partitions as parts
    from routing.models import Subscription

    store, _ = Store.objects.get_or_create(name="retention", defaults={"token_hash": "x" * 64})
    sub, _ = Subscription.objects.get_or_create(name="retention", defaults={"url": "http://127.0.0.1:9/"})
    span = int(os.environ["HUB_PARTITION_SPAN"])
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE events_event, events_event_key RESTART IDENTITY CASCADE")
        for table in ("routing_attempt", "routing_delivery", "events_event"):
            for partition in parts.partitions(table):
                parts.partition_drop(table, partition)
            parts.partition_create(table, 0, span)
            parts.partition_create(table, span, 2 * span)
        cursor.execute("ALTER TABLE events_event DISABLE TRIGGER events_event_key_take")
        cursor.execute(
            """
            INSERT INTO events_event (id, uid, store_id, message, message_id, payload, resource_key, source,
                                      origin, depth, status, created_at, traceparent)
            SELECT 2 * g - 1, gen_random_uuid(), %s, 'order:new', 'fill-' || g,
                   json_build_object('order', json_build_object('number', 'R' || g)),
                   'order:R' || g, 'store', '', 0, 'delivered', now() - interval '7 days', ''
            FROM generate_series(1, %s) AS g
            """,
            [store.pk, rows],
        )
        cursor.execute("ALTER TABLE events_event ENABLE TRIGGER events_event_key_take")
        cursor.execute("INSERT INTO events_event_key SELECT store_id, message_id, id FROM events_event")
        cursor.execute(
            """
            INSERT INTO routing_delivery (id, event_id, subscription_id, state, resource_key, attempt_count,
                                          next_attempt_at, last_error, delivered_at, created_at, updated_at)
            SELECT 2 * g, 2 * g - 1, %s, CASE WHEN g <= 10 THEN 'failed' ELSE 'delivered' END, 'order:R' || g, 1,
                   now() - interval '7 days', '', now() - interval '7 days', now() - interval '7 days',
                   now() - interval '7 days'
            FROM generate_series(1, %s) AS g
            """,
            [sub.pk, rows],
        )
        cursor.execute(
            """
            INSERT INTO routing_attempt (delivery_id, number, started_at, request_method, request_url, status_code,
                                         latency_ms, response_headers, response_body, error, succeeded, summary)
            SELECT 2 * g, 1, now() - interval '7 days', 'POST', 'http://127.0.0.1:9/', 200, 5, '{}', '', '',
                   true, ''
            FROM generate_series(1, %s) AS g
            """,
            [rows],
        )
        cursor.execute("SELECT setval(pg_get_serial_sequence('events_event', 'id'), %s)", [span + 10])
        cursor.execute("VACUUM ANALYZE")
        cursor.execute("CHECKPOINT")


def measure(way: str) -> float:
    """Seconds to take the old range out: its partitions dropped, or its rows deleted."""
    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from ops.partitions import partitions_retention_drop

    older_than = timezone.now() - timedelta(days=1)
    slow: list[tuple[float, str]] = []
    marks: list[tuple[float, float, str]] = []

    def timed(execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            slow.append((time.perf_counter() - began, " ".join(sql.split())[:110]))
            marks.append((began, time.perf_counter(), sql))

    started = time.perf_counter()
    if way == "drop":
        with connection.execute_wrapper(timed):
            dropped = partitions_retention_drop(older_than=older_than)
        assert dropped.kept_events == 10, dropped
        keys = sum(seconds for seconds, sql in slow if sql.startswith("DELETE FROM events_event_key"))
        # The tables' exclusive lock: from the LOCK to the last statement before the keys' batches
        # (the commit itself is not seen here; it ends before the first batch starts).
        locked = next(began for began, _, sql in marks if sql.startswith("LOCK TABLE"))
        first_key = next(began for began, _, sql in marks if sql.startswith("DELETE FROM events_event_key"))
        print(f"    the exclusive lock held {first_key - locked:.3f} s (up to the commit's end)")
        print(f"    of which {keys:.3f} s deleting the keys after the commit ({dropped.keys_forgotten:,} keys)")
        print(f"    {len(slow)} statements, {sum(seconds for seconds, _ in slow):.3f} s in all; the slowest:")
        for seconds, sql in sorted(slow, reverse=True)[:8]:
            print(f"    {seconds:.3f} s  {sql}")
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            kept = "SELECT event_id FROM routing_delivery WHERE state = 'failed'"
            cursor.execute(
                "DELETE FROM routing_attempt WHERE delivery_id IN"
                f" (SELECT id FROM routing_delivery WHERE event_id NOT IN ({kept}))"
            )
            cursor.execute(f"DELETE FROM routing_delivery WHERE event_id NOT IN ({kept})")
            cursor.execute("DELETE FROM events_event WHERE id NOT IN (SELECT event_id FROM routing_delivery)")
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
