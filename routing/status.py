"""An event's status, derived from its deliveries and kept on the event row."""

from __future__ import annotations

import functools
from collections.abc import Collection

from django.db import connection, transaction

from events.models import Event, EventStatus
from routing.models import DELIVERY_UNFINISHED_STATES, Delivery, DeliveryState
from routing.rows import placeholders


def event_status_derive(states: list[tuple[int, int, str, int]]) -> str:
    """An event's status from its deliveries, given as (subscription_id, delivery_id, state,
    attempt_count). For each subscription only its latest delivery counts (a replay supersedes
    what it replays); cancelled deliveries count only when nothing else is left."""
    latest: dict[int, tuple[int, str, int]] = {}
    for sub_id, delivery_id, state, attempts in states:
        if sub_id not in latest or delivery_id > latest[sub_id][0]:
            latest[sub_id] = (delivery_id, state, attempts)
    if not latest:
        return EventStatus.UNROUTED
    current = [(state, attempts) for _, state, attempts in latest.values()]
    live = [c for c in current if c[0] != DeliveryState.CANCELLED] or current
    if any(state in DELIVERY_UNFINISHED_STATES for state, _ in live):
        started = any(attempts > 0 or state != DeliveryState.PENDING for state, attempts in live)
        return EventStatus.DELIVERING if started else EventStatus.QUEUED
    delivered = sum(1 for state, _ in live if state == DeliveryState.DELIVERED)
    if delivered == len(live):
        return EventStatus.DELIVERED
    return EventStatus.PARTIALLY_FAILED if delivered else EventStatus.FAILED


def event_status_refresh(*, event_id: int) -> str:
    """Recompute an event's status under a row lock, so deliveries finishing together agree."""
    return events_status_refresh(event_ids=[event_id]).get(event_id, "")


def events_status_refresh(*, event_ids: Collection[int]) -> dict[int, str]:
    """event_status_refresh for several events with one lock, one read and one UPDATE per new
    status; locked in id order, so two batches ending events of one fan-out cannot deadlock.

    Written-out SQL: every batch a pump records ends here, and the ORM took longer to compile the
    locking join and the UPDATE than PostgreSQL to run them."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    # No savepoint inside a caller's transaction (two round trips fewer): nothing here is caught
    # and retried, so a failure rolls back the caller's transaction as a whole anyway.
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        # The lock and the read in one statement: each event with its deliveries (or none).
        cursor.execute(_events_locked_sql(len(ids)), ids)
        current: dict[int, str] = {}
        rows: dict[int, list[tuple[int, int, str, int]]] = {}
        for pk, status, *delivery in cursor.fetchall():
            current[pk] = status
            rows.setdefault(pk, [])
            if delivery[1] is not None:
                rows[pk].append(tuple(delivery))
        statuses = {pk: event_status_derive(rows[pk]) for pk in current}
        changed: dict[str, list[int]] = {}
        for pk, status in statuses.items():
            if status != current[pk]:
                changed.setdefault(status, []).append(pk)
        for status, pks in changed.items():
            cursor.execute(_events_status_set_sql(len(pks)), [status, *pks])
    return statuses


@functools.lru_cache(maxsize=64)
def _events_locked_sql(count: int) -> str:
    quote = connection.ops.quote_name
    # FOR NO KEY UPDATE: deliveries reference events, and a plain FOR UPDATE would also block
    # their inserts and updates (the foreign key's share lock); SQLite locks the whole database.
    lock = " FOR NO KEY UPDATE OF e" if connection.features.has_select_for_no_key_update else ""
    return (
        f"SELECT e.{quote('id')}, e.{quote('status')}, d.{quote('subscription_id')}, d.{quote('id')},"
        f" d.{quote('state')}, d.{quote('attempt_count')}"
        f" FROM {quote(Event._meta.db_table)} e LEFT JOIN {quote(Delivery._meta.db_table)} d"
        f" ON d.{quote('event_id')} = e.{quote('id')}"
        f" WHERE e.{quote('id')} IN ({placeholders(count)}) ORDER BY e.{quote('id')}{lock}"
    )


@functools.lru_cache(maxsize=64)
def _events_status_set_sql(count: int) -> str:
    quote = connection.ops.quote_name
    return (
        f"UPDATE {quote(Event._meta.db_table)} SET {quote('status')} = %s"
        f" WHERE {quote('id')} IN ({placeholders(count)})"
    )
