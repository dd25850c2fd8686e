"""Partition upkeep on PostgreSQL (docs/storage.md): the next partitions created ahead of the ids
(beat), and retention by dropping whole ranges of ids once every row in them is old, after the
rows that must stay have been moved to the default partitions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from events.models import EventDescendants
from infra import partitions as parts
from routing.models import DELIVERY_UNFINISHED_STATES, DeliveryState, Notification, Schedule

logger = logging.getLogger(__name__)

EVENTS, DELIVERIES, ATTEMPTS = "events_event", "routing_delivery", "routing_attempt"
# Children first: the order rows are taken out and partitions detached in.
_TABLES_DOWN = (ATTEMPTS, DELIVERIES, EVENTS)
# A delivery in one of these states still needs its event (or someone's attention): ops.services'.
_KEEPS_EVENT = tuple(str(state) for state in (*DELIVERY_UNFINISHED_STATES, DeliveryState.FAILED))
# Retention waits this long for its locks, then gives up until its next run: pushes queue behind a
# waiting exclusive lock, so it must not wait long.
LOCK_TIMEOUT_MS = 2000


def partitioned(*, using: Any = None) -> bool:
    """Whether this database keeps events in partitions (PostgreSQL after events 0010)."""
    return parts.partitioned(EVENTS, using=using)


def partitions_ahead() -> list[str]:
    """Create the next partitions of every partitioned table, so that HUB_PARTITION_AHEAD whole
    empty ranges lie ahead of the last id given; the names of those created."""
    if not partitioned():
        return []
    created = []
    with transaction.atomic():
        for table in parts.PARTITIONED:
            made = parts.partitions_ahead(table, span=settings.HUB_PARTITION_SPAN, ahead=settings.HUB_PARTITION_AHEAD)
            created.extend(p.name for p in made)
    if created:
        logger.info("partitions created", extra={"partitions": created})
    return created


# The tables whose plans on the hot path follow their statistics (the claim, the status refresh).
# Attempts are written and read by key: an ANALYZE of theirs while they fill, every few seconds
# at a busy hub, cost the delivery phase more CPU than autovacuum's pace costs their plans.
STATISTICS_KEPT = ("events_event", "routing_delivery")


def partitions_statistics_refresh(*, using: Any = None) -> list[str]:
    """ANALYZE the partitions that have outgrown their statistics (infra.partitions.partitions_grown),
    every HUB_PARTITION_ANALYZE_SECONDS: a new range filled at a busy hub's pace would otherwise
    be planned as empty until autovacuum came round, and its claims and status refreshes would
    read it whole. `using`: a connection other than Django's default. The names of those analyzed."""
    if not partitioned(using=using):
        return []
    floor = settings.HUB_PARTITION_ANALYZE_FLOOR_PAGES
    grown = parts.partitions_grown(list(STATISTICS_KEPT), floor_pages=floor, using=using)
    for name in grown:
        parts.partition_analyze(name, using=using)
    if grown:
        logger.info("partitions analyzed", extra={"partitions": grown})
    return grown


@dataclass
class Dropped:
    """What one retention run took out: the partitions (by table), and the rows moved to the
    default partitions because they must stay, or deleted because they referenced dropped ones."""

    partitions: dict[str, list[str]] = field(default_factory=dict)
    kept_events: int = 0
    kept_deliveries: int = 0
    deleted_deliveries: int = 0
    keys_forgotten: int = 0


def partitions_retention_drop(*, older_than: datetime, include_unrouted: bool = False) -> Dropped:
    """Drop the oldest ranges of ids whose events and deliveries are all older than `older_than`,
    in one transaction. The events that must stay by ops.services.events_purgeable's rules (a
    delivery unfinished or failed; no delivery at all unless `include_unrouted`; a descendant
    that stays, anywhere) go to the default partition instead, with their deliveries and
    attempts. Rows elsewhere that reference a dropped event (a replay made later, its attempts,
    notifications, keys, counters) are deleted; a schedule forgets it as its last event.

    No row is deleted from a partition that is dropped: PostgreSQL would hold its foreign keys'
    checks to the commit, and a table with checks pending cannot be dropped. The kept rows are
    copied out, and the rows elsewhere that reference them are taken out until the ranges are
    gone (a foreign key is checked on DETACH), then all are written back."""
    dropped = Dropped()
    unrouted: set[int] = set()
    if not include_unrouted:
        # Read before the lock, the longest look: an event that gets a delivery meanwhile is kept
        # all the same, and an unfinished one is seen under the lock.
        with connection.cursor() as cursor:
            spans = _expired_spans(cursor, older_than)
            unrouted = _unrouted(cursor, [(low, high) for low, high, _ in spans]) if spans else set()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
        # Checks left pending by an enclosing transaction's writes (none when beat runs it) would
        # keep a partition from being dropped: made now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        cursor.execute(f"LOCK TABLE {', '.join(_TABLES_DOWN[::-1])} IN ACCESS EXCLUSIVE MODE")
        spans = _expired_spans(cursor, older_than)
        if not spans:
            return dropped
        ranges = [(low, high) for low, high, _ in spans]

        keepers = _keepers(cursor, ranges, unrouted=unrouted)
        in_events = _in_ranges("event_id", ranges)
        # Deliveries in the ranges whose event stays (a keeper, or an event outside the ranges).
        cursor.execute(
            f"SELECT id FROM {DELIVERIES} WHERE {_in_ranges('id', ranges)}"
            f" AND (event_id = ANY(%s) OR {_outside('event_id', ranges)})",
            [keepers],
        )
        kept_deliveries = [row[0] for row in cursor.fetchall()]
        # Deliveries outside the ranges of events that go (a replay made later, delivered).
        cursor.execute(
            f"SELECT id FROM {DELIVERIES} WHERE {_outside('id', ranges)} AND {in_events} AND NOT (event_id = ANY(%s))",
            [keepers],
        )
        stragglers = [row[0] for row in cursor.fetchall()]

        gone_events = f"{in_events} AND NOT (event_id = ANY(%s))"
        gone_deliveries = f"{_in_ranges('delivery_id', ranges)} AND NOT (delivery_id = ANY(%s))"
        cursor.execute(f"DELETE FROM {ATTEMPTS} WHERE delivery_id = ANY(%s)", [stragglers])
        cursor.execute(
            f"DELETE FROM {Notification._meta.db_table}"
            f" WHERE ({gone_events}) OR ({gone_deliveries}) OR delivery_id = ANY(%s)",
            [keepers, kept_deliveries, stragglers],
        )
        cursor.execute(f"DELETE FROM {DELIVERIES} WHERE id = ANY(%s)", [stragglers])
        descendants, schedules = EventDescendants._meta.db_table, Schedule._meta.db_table
        cursor.execute(f"DELETE FROM {descendants} WHERE {gone_events.replace('event_id', 'root_id')}", [keepers])
        cursor.execute(
            f"UPDATE {schedules} SET last_event_id = NULL WHERE {gone_events.replace('event_id', 'last_event_id')}",
            [keepers],
        )

        kept = {
            ATTEMPTS: ("delivery_id", kept_deliveries),
            DELIVERIES: ("id", kept_deliveries),
            EVENTS: ("id", keepers),
        }
        for table in _TABLES_DOWN:
            column, ids = kept[table]
            _stash(
                cursor,
                f"{table}_kept",
                f"SELECT * FROM {table} WHERE {_in_ranges(column, ranges)} AND {column} = ANY(%s)",
                [ids],
            )
        referencing = _referencing_taken_out(cursor, ranges, {EVENTS: keepers, DELIVERIES: kept_deliveries})

        for table in _TABLES_DOWN:
            for _, _, by_table in spans:
                partition = by_table.get(table)
                if partition is not None:
                    parts.partition_drop(table, partition)
                    dropped.partitions.setdefault(table, []).append(partition.name)
        # Back in: the kept rows into the default partitions, now that their ranges are free.
        for table in _TABLES_DOWN[::-1]:
            cursor.execute(f"INSERT INTO {table} SELECT * FROM {table}_kept")
        for table, stash in referencing:
            cursor.execute(f"INSERT INTO {table} SELECT * FROM {stash}")

    # After the commit, while pushes go on: until then a dropped event's key refuses its
    # message_id, after it the key is taken over (events_event_key_take).
    dropped.keys_forgotten = keys_forget(ranges)
    dropped.kept_events = len(keepers)
    dropped.kept_deliveries = len(kept_deliveries)
    dropped.deleted_deliveries = len(stragglers)
    logger.info(
        "retention dropped partitions",
        extra={
            "partitions": dropped.partitions,
            "kept_events": dropped.kept_events,
            "kept_deliveries": dropped.kept_deliveries,
            "deleted_deliveries": dropped.deleted_deliveries,
            "keys_forgotten": dropped.keys_forgotten,
            "older_than": older_than.isoformat(),
        },
    )
    return dropped


def _stash(cursor, name: str, select: str, params: list) -> None:
    """A temporary copy of the rows `select` reads, gone at the commit."""
    cursor.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")
    cursor.execute(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS {select}", params)


def _referencing_taken_out(cursor, ranges: list[tuple[int, int]], kept: dict[str, list[int]]) -> list[tuple[str, str]]:
    """Take out every row outside the ranges that references a kept row (by any foreign key, read
    from the catalog): each table's rows into a stash of its own, deleted until they are written
    back. Returns (table, stash) pairs."""
    cursor.execute(
        "SELECT conrelid::regclass::text, confrelid::regclass::text, a.attname FROM pg_constraint c"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " WHERE c.contype = 'f' AND c.conparentid = 0 AND c.confrelid::regclass::text = ANY(%s)",
        [list(kept)],
    )
    conditions: dict[str, list[tuple[str, list[int]]]] = {}
    for table, referenced, column in cursor.fetchall():
        if kept[referenced]:
            conditions.setdefault(table, []).append((f"{column} = ANY(%s)", kept[referenced]))
    taken = []
    for table, pairs in sorted(conditions.items()):
        where = " OR ".join(condition for condition, _ in pairs)
        if table in parts.PARTITIONED:
            where = f"({where}) AND {_outside(parts.PARTITIONED[table][0], ranges)}"
        stash = f"{table}_referencing"
        _stash(cursor, stash, f"SELECT * FROM {table} WHERE {where}", [ids for _, ids in pairs])
        cursor.execute(f"DELETE FROM {table} WHERE {where}", [ids for _, ids in pairs])
        taken.append((table, stash))
    return taken


def keys_forget(ranges: list[tuple[int, int]], *, batch_size: int = 10_000) -> int:
    """Delete the (store, message_id) keys of the events gone from `ranges`, in batches of short
    transactions; a key whose event was kept (now in a default partition) stays."""
    forgotten = 0
    for low, high in ranges:
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "DELETE FROM events_event_key WHERE ctid = ANY(ARRAY("
                    " SELECT k.ctid FROM events_event_key k WHERE k.event_id >= %s AND k.event_id < %s"
                    f" AND NOT EXISTS (SELECT 1 FROM {EVENTS} e WHERE e.id = k.event_id) LIMIT %s))",
                    [low, high, batch_size],
                )
                deleted = cursor.rowcount
            forgotten += deleted
            if deleted < batch_size:
                break
    return forgotten


def ranges_partitioned() -> tuple[int, int] | None:
    """The lowest and highest id the events' range partitions cover; None when there are none.
    Events outside it live in the default partition."""
    events = parts.partitions(EVENTS)
    return (events[0].low, events[-1].high) if events else None


def _expired_spans(cursor, older_than: datetime) -> list[tuple[int, int, dict[str, parts.Partition]]]:
    """The oldest ranges, lowest first and stopping at the first that is not over: every id in it
    given out, and the events and deliveries in it older than `older_than`. Each with its
    partition in each table (a table may have none for an old range)."""
    last = parts.sequence_last(parts.SHARED_SEQUENCE)
    by_low: dict[tuple[int, int], dict[str, parts.Partition]] = {}
    for table in parts.PARTITIONED:
        for partition in parts.partitions(table):
            by_low.setdefault((partition.low, partition.high), {})[table] = partition
    spans = []
    for (low, high), by_table in sorted(by_low.items()):
        if high - 1 > last:
            break
        newest = []
        for table, column in ((EVENTS, "created_at"), (DELIVERIES, "created_at")):
            if table in by_table:
                cursor.execute(f"SELECT MAX({column}) FROM {by_table[table].name}")
                newest.append(cursor.fetchone()[0])
        if any(at is not None and at >= older_than for at in newest):
            break
        spans.append((low, high, by_table))
    return spans


def _keepers(cursor, ranges: list[tuple[int, int]], *, unrouted: set[int]) -> list[int]:
    """The events in `ranges` that must stay: owed or failed deliveries, no delivery (`unrouted`,
    read by _unrouted), or a descendant that stays; and their ancestors in the ranges."""
    in_ids = _in_ranges("id", ranges)
    cursor.execute(
        f"SELECT DISTINCT event_id FROM {DELIVERIES} WHERE state = ANY(%s) AND {_in_ranges('event_id', ranges)}",
        [list(_KEEPS_EVENT)],
    )
    seeds = {row[0] for row in cursor.fetchall()}
    seeds.update(event for event in unrouted if any(low <= event < high for low, high in ranges))
    # A child that stays outside the ranges keeps its parent (its foreign key would dangle).
    cursor.execute(
        f"SELECT DISTINCT parent_id FROM {EVENTS} WHERE {_in_ranges('parent_id', ranges)} AND {_outside('id', ranges)}"
    )
    seeds.update(row[0] for row in cursor.fetchall())
    if not seeds:
        return []
    cursor.execute(
        f"WITH RECURSIVE up(id, parent_id) AS ("
        f" SELECT id, parent_id FROM {EVENTS} WHERE id = ANY(%s)"
        f" UNION SELECT e.id, e.parent_id FROM {EVENTS} e JOIN up ON e.id = up.parent_id)"
        f" SELECT id FROM up WHERE {in_ids}",
        [sorted(seeds)],
    )
    return sorted(row[0] for row in cursor.fetchall())


def _outside(column: str, ranges: list[tuple[int, int]]) -> str:
    """`column` in none of the ranges, as SQL bounds PostgreSQL prunes partitions and scans indexes by."""
    bounds, below = [], None
    for low, high in sorted(ranges):
        if below is None:
            bounds.append(f"{column} < {int(low)}")
        elif below < low:
            bounds.append(f"({column} >= {int(below)} AND {column} < {int(low)})")
        below = high
    bounds.append(f"{column} >= {int(below)}")
    return "(" + " OR ".join(bounds) + ")"


def _unrouted(cursor, ranges: list[tuple[int, int]]) -> set[int]:
    """The events in `ranges` without any delivery."""
    cursor.execute(
        f"SELECT e.id FROM {EVENTS} e WHERE {_in_ranges('e.id', ranges)}"
        f" AND NOT EXISTS (SELECT 1 FROM {DELIVERIES} d WHERE d.event_id = e.id)"
    )
    return {row[0] for row in cursor.fetchall()}


def _in_ranges(column: str, ranges: list[tuple[int, int]]) -> str:
    """`column` within one of the ranges [low, high), as SQL (integers only, no parameters)."""
    return "(" + " OR ".join(f"({column} >= {int(low)} AND {column} < {int(high)})" for low, high in ranges) + ")"
