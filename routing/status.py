"""An event's status, derived from its deliveries and kept on the event row."""

from __future__ import annotations

from collections.abc import Collection

from django.db import connection, transaction

from events.models import EventStatus
from routing import sql
from routing.models import DELIVERY_UNFINISHED_STATES, DeliveryState


def event_status_derive(states: list[tuple[int, int, str, int]]) -> str:
    """An event's status from its deliveries; per subscription only the latest (a replay) counts."""
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
    """event_status_refresh for several events; locked in id order, so two batches cannot deadlock."""
    ids = sorted(set(event_ids))
    if not ids:
        return {}
    postgresql = connection.features.has_select_for_no_key_update
    read = sql.bound(sql.events_with_deliveries(len(ids), postgresql=postgresql))
    # No savepoint: nothing here is caught, so a failure rolls back the caller's transaction anyway.
    with transaction.atomic(savepoint=False), sql.bound_cursor() as cursor:
        if postgresql:
            # The lock, then the read in a statement of its own: its snapshot, taken once the locks
            # are held, sees what a transaction recording the same event committed while this one
            # waited (read with the lock, it saw that event's other deliveries as they were before).
            # One round trip: the server runs the read only once the lock statement is done.
            with connection.wrap_database_errors, connection.connection.pipeline():
                cursor.execute(sql.bound(sql.events_lock(len(ids))), ids)
                cursor.execute(read, ids)
                found = cursor.fetchall()
        else:
            # SQLite's writers take the whole database, one at a time.
            cursor.execute(read, ids)
            found = cursor.fetchall()
        current: dict[int, str] = {}
        rows: dict[int, list[tuple[int, int, str, int]]] = {}
        for pk, status, *delivery in found:
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
            cursor.execute(sql.bound(sql.events_status_set(len(pks))), [status, *pks])
    return statuses
