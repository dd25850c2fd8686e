"""Filling the events table fast, in SQL, for the stored-events comparison."""

from __future__ import annotations


def events_truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("TRUNCATE events_event RESTART IDENTITY CASCADE")
        else:
            for table in ("routing_notification", "routing_attempt", "routing_delivery", "events_event"):
                cursor.execute(f"DELETE FROM {table}")


def events_fill(have: int, want: int) -> None:
    """Store events up to `want` in a few SQL statements: small order payloads (the indexes, not the
    payload bytes, decide what a bigger table costs an insert) with the same indexes filled in."""
    from django.db import connection

    from events.models import Store

    store_id = Store.objects.get(name="bench").pk
    step = 200_000
    with connection.cursor() as cursor:
        for first in range(have + 1, want + 1, step):
            last = min(want, first + step - 1)
            if connection.vendor == "postgresql":
                cursor.execute(
                    """
                    INSERT INTO events_event (uid, store_id, message, message_id, payload, resource_key, source,
                                              origin, depth, status, created_at, traceparent)
                    SELECT gen_random_uuid(), %s, 'order:new', 'fill-' || g,
                           json_build_object('order', json_build_object('number', 'R' || g,
                               'email', 'customer' || g || '@example.com', 'total', '99.90', 'state', 'complete')),
                           'order:R' || g, 'store', '', 0, 'unrouted', now() - make_interval(secs => %s - g), ''
                    FROM generate_series(%s, %s) AS g
                    """,
                    [store_id, want, first, last],
                )
            else:
                cursor.execute(
                    """
                    WITH RECURSIVE g(n) AS (SELECT %s UNION ALL SELECT n + 1 FROM g WHERE n < %s)
                    INSERT INTO events_event (uid, store_id, message, message_id, payload, resource_key, source,
                                              origin, depth, status, created_at, traceparent)
                    SELECT lower(hex(randomblob(16))), %s, 'order:new', 'fill-' || n,
                           json_object('order', json_object('number', 'R' || n, 'email', 'customer' || n
                               || '@example.com', 'total', '99.90', 'state', 'complete')),
                           'order:R' || n, 'store', '', 0, 'unrouted',
                           datetime('now', '-' || (%s - n) || ' seconds'), ''
                    FROM g
                    """,
                    [first, last, store_id, want],
                )
    if connection.vendor == "postgresql":
        # Measure a table that has 1M events, not the aftermath of loading them: the load's
        # checkpoint and autovacuum would otherwise run during the measurement.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE events_event")
        database_settle()


def database_settle() -> None:
    """CHECKPOINT on PostgreSQL, so that a phase's WAL is not written out during the next phase."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
