"""Filling the events table fast, in SQL, for the stored-events comparison."""

from __future__ import annotations


def events_truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # With the events partitioned, their (store, message_id) keys are a table of their own.
            keys = ", events_event_key" if _partitioned() else ""
            cursor.execute(f"TRUNCATE events_event{keys} RESTART IDENTITY CASCADE")
        else:
            for table in ("routing_notification", "routing_attempt", "routing_delivery", "events_event"):
                cursor.execute(f"DELETE FROM {table}")


def events_fill(have: int, want: int, *, random_ids: bool = False) -> None:
    """Store events up to `want` in a few SQL statements: small order payloads (the indexes, not the
    payload bytes, decide what a bigger table costs an insert) with the same indexes filled in.
    `random_ids` (PostgreSQL): message_ids spread over the keys' index, as UUIDs would be."""
    from django.db import connection

    from events.models import Store

    store_id = Store.objects.get(name="bench").pk
    step = 200_000
    partitioned = _partitioned()
    with connection.cursor() as cursor:
        if partitioned:
            _partitions_for(want - have)
            # The keys in one statement after the rows, not one trigger call per row.
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM events_event")
            before = cursor.fetchone()[0]
            cursor.execute("ALTER TABLE events_event DISABLE TRIGGER events_event_key_take")
        for first in range(have + 1, want + 1, step):
            last = min(want, first + step - 1)
            if connection.vendor == "postgresql":
                cursor.execute(
                    """
                    INSERT INTO events_event (uid, store_id, message, message_id, payload, resource_key, source,
                                              origin, depth, status, created_at, traceparent)
                    SELECT gen_random_uuid(), %s, 'order:new', {message_id},
                           json_build_object('order', json_build_object('number', 'R' || g,
                               'email', 'customer' || g || '@example.com', 'total', '99.90', 'state', 'complete')),
                           'order:R' || g, 'store', '', 0, 'unrouted', now() - make_interval(secs => %s - g), ''
                    FROM generate_series(%s, %s) AS g
                    """.format(message_id="md5('fill-' || g)" if random_ids else "'fill-' || g"),
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
    if partitioned:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE events_event ENABLE TRIGGER events_event_key_take")
            # In key order: random keys otherwise take an index page out of cache each.
            cursor.execute(
                "INSERT INTO events_event_key SELECT store_id, message_id, id FROM events_event WHERE id > %s"
                " ORDER BY store_id, message_id",
                [before],
            )
    if connection.vendor == "postgresql":
        # Measure a table that has 1M events, not the aftermath of loading them: the load's
        # checkpoint and autovacuum would otherwise run during the measurement.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE events_event")
            if partitioned:
                cursor.execute("VACUUM ANALYZE events_event_key")
        database_settle()


def _partitioned() -> bool:
    from ops.partitions import partitioned

    return partitioned()


def _partitions_for(rows: int) -> None:
    """Ranges ahead for `rows` more ids, as beat would have made them while they came in."""
    from django.conf import settings

    from infra import partitions as parts

    span = settings.HUB_PARTITION_SPAN
    for table in parts.PARTITIONED:
        parts.partitions_ahead(table, span=span, ahead=rows // span + settings.HUB_PARTITION_AHEAD)


def database_settle() -> None:
    """CHECKPOINT on PostgreSQL, so that a phase's WAL is not written out during the next phase."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
