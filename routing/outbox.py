"""The outbox: the one writer of new deliveries. An event is stored with one delivery per
subscription that wants it, all or nothing, and the endpoints are woken once that is committed.

Every way in comes through here: a store's push or batch, an onward message an endpoint returned
(routing.replies), a replay and an admin's test send (routing.operations).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, connections, router, transaction

from events import sql as events_sql
from events.models import Event, EventStatus, Store
from events.services import (
    IngestResult,
    event_build,
    event_insert,
    event_unsaved,
    event_values,
    events_insert,
    row_saved,
)
from events.validation import Envelope
from routing import sql
from routing.departures import departures_notes
from routing.models import Delivery, Notification, Subscription
from routing.subscriptions import (
    subscriptions_cache_clear,
    subscriptions_enabled,
    subscriptions_enabled_for_routing,
    subscriptions_for_event,
)
from routing.wakeup import batch_wake, deliveries_wake, pumps_enqueue


def event_accept(
    *, store: Store | None, envelope: Envelope, parent: Event | None = None, origin: str = ""
) -> IngestResult:
    """Store an event and its deliveries in one transaction, and wake their endpoints once committed.

    A store's push on its own (no caller's transaction) is one statement in autocommit: concurrent
    pushes share PostgreSQL's WAL flushes, and none waits for another's round trips."""
    event = event_build(store=store, envelope=envelope, parent=parent, origin=origin)
    if store is not None and not transaction.get_connection().in_atomic_block:
        return _push_alone(store, event)
    return _accept(store=store, events=[event])[0]


def _push_alone(store: Store, event: Event) -> IngestResult:
    """One push in autocommit: the insert needs no savepoint, because a repeated message_id can roll
    the whole statement back and be looked up after it."""
    for last_try in (False, True):
        try:
            return _accept(store=store, events=[event], savepoint=False)[0]
        except IntegrityError:
            existing = Event.objects.filter(store=store, message_id=event.message_id).first()
            if existing is not None:
                return IngestResult(existing, created=False)
            if last_try:
                raise
            # Not a repeat: a subscription this process routes by was deleted by another
            # process, and its delivery failed the statement. Route again by the list as it is now.
            subscriptions_cache_clear()
            event_unsaved(event)
    raise AssertionError("unreachable")


def events_accept(*, store: Store, envelopes: list[Envelope]) -> list[IngestResult]:
    """Accept a store's batch as event_accept would each envelope, in order, but with one read of
    the subscriptions, one INSERT for the events, one for the deliveries and one wake-up."""
    return _accept(store=store, events=[event_build(store=store, envelope=e) for e in envelopes])


def delivery_add(
    *,
    event_id: int,
    subscription_id: int,
    at: datetime,
    resource_key: str | None = None,
    replay_of_id: int | None = None,
) -> Delivery:
    """One more delivery of a stored event to one subscription, due `at`, outside routing: a
    replay (with the resource key of what it replays, which keeps the resource's order) or a test
    send (with none: held back by nothing)."""
    delivery = Delivery.objects.create(
        event_id=event_id,
        subscription_id=subscription_id,
        resource_key=resource_key,
        replay_of_id=replay_of_id,
        next_attempt_at=at,
    )
    transaction.on_commit(lambda: pumps_enqueue([subscription_id]))
    return delivery


def _accept(*, store: Store | None, events: list[Event], savepoint: bool = True) -> list[IngestResult]:
    """Route built events before they are stored (an event nobody wants is stored as unrouted),
    store them and their deliveries all or nothing, and wake the endpoints once committed.
    Deliveries are created in the events' order, so their ids keep each resource's order.

    One event is one INSERT statement with its deliveries and needs no transaction of its own: the
    statement is atomic, and in autocommit it is committed before it returns, so a push answered
    202 is as durable as with BEGIN/COMMIT, with fewer round trips. A batch inside its caller's
    transaction needs no savepoint either: that transaction already makes it all or nothing."""
    # A store's push (the web's hot path) routes by the list each process remembers for a moment;
    # a message an endpoint returned (store None, accepted by a worker, seldom) reads it fresh.
    subscriptions = subscriptions_enabled_for_routing() if store is not None else subscriptions_enabled()
    wanted = _route(events, subscriptions)
    # Checked before anything is written: no row is locked while the payloads are walked.
    notes = departures_notes(events)
    if len(events) == 1:
        deliveries = [Delivery.routed(event=events[0], subscription=sub) for sub in wanted[0]]
        result = _event_with_deliveries_insert(events[0], deliveries, savepoint=savepoint, notes=notes)
        if deliveries and result.created:
            # Several endpoints: one fan-out message; one: its pump's, which sends all due there.
            transaction.on_commit(lambda: deliveries_wake([(d.pk, d.subscription_id) for d in deliveries]))
        return [result]
    with transaction.atomic():
        return _batch_write(store, events, wanted, notes, savepoint=savepoint)


def _batch_write(
    store: Store | None,
    events: list[Event],
    wanted: list[list[Subscription]],
    notes: Sequence[Notification],
    *,
    savepoint: bool = True,
) -> list[IngestResult]:
    """Routed events, their deliveries and notes, inside the caller's transaction."""
    if store is not None and not _subscriptions_kept([s.pk for subs in wanted for s in subs]):
        # One of them was deleted by another process since this one read the list: route the
        # batch again by the list as it is now (its deliveries would fail the commit).
        subscriptions_cache_clear()
        wanted = _route(events, subscriptions_enabled_for_routing())
    if store is not None:
        results = events_insert(store=store, events=events)
    else:
        results = [event_insert(event, savepoint=savepoint) for event in events]
    deliveries = [
        Delivery.routed(event=result.event, subscription=sub)
        for result, subs in zip(results, wanted, strict=True)
        if result.created
        for sub in subs
    ]
    if deliveries:
        _deliveries_insert(deliveries)
        # A pump message per endpoint, or a fan-out per event when the events are few for them.
        woken = [(d.event_id, d.pk, d.subscription_id) for d in deliveries]
        transaction.on_commit(lambda: batch_wake(woken))
    stored = {id(result.event) for result in results if result.created}
    Notification.objects.bulk_create([note for note in notes if id(note.event) in stored])
    return results


def _deliveries_insert(deliveries: list[Delivery]) -> None:
    """The deliveries of stored events by one written-out INSERT, ids set as bulk_create sets them."""
    db = connections[router.db_for_write(Delivery)]
    fields = [Delivery._meta.get_field("event"), *sql.delivery_fields()]
    params = [f.get_db_prep_save(f.pre_save(row, True), db) for row in deliveries for f in fields]
    with db.cursor() as cursor:
        cursor.execute(sql.deliveries_insert(len(deliveries)), params)
        ids = [row[0] for row in cursor.fetchall()]
    for row, pk in zip(deliveries, ids, strict=True):
        row.pk = pk
        row_saved(row, db.alias)


def _event_with_deliveries_insert(
    event: Event, deliveries: list[Delivery], *, savepoint: bool, notes: Sequence[Notification] = ()
) -> IngestResult:
    """The event, its deliveries and its notes (routing.departures), all or nothing; a repeated
    message_id writes none of them. On PostgreSQL one statement (a routed push is one round trip
    instead of BEGIN, two INSERTs and COMMIT); elsewhere a transaction holds the event's INSERT and
    a bulk_create of the deliveries and of the notes."""
    if not deliveries and not notes:
        return event_insert(event, savepoint=savepoint)
    db = connections[router.db_for_write(Delivery)]
    if events_sql.server_bound(db):
        return event_insert(
            event, savepoint=savepoint, write=lambda: _event_with_deliveries_write(db, event, deliveries, notes)
        )
    with transaction.atomic():
        result = event_insert(event, savepoint=savepoint)
        if result.created:
            Delivery.objects.bulk_create(deliveries)
            Notification.objects.bulk_create(notes)
    return result


def _event_with_deliveries_write(
    db: Any, event: Event, deliveries: list[Delivery], notes: Sequence[Notification]
) -> None:
    params = event_values([event], db, "save")
    for rows, fields in ((deliveries, sql.delivery_fields()), (notes, sql.notification_fields())):
        for row in rows:
            # Not _prepare_related_fields_for_save: it refuses the event, unsaved until this statement.
            params.extend(f.get_db_prep_save(f.pre_save(row, True), db) for f in fields)
    with events_sql.insert_cursor(db, prepared=settings.DB_PREPARED_STATEMENTS) as cursor:
        cursor.execute(sql.event_with_deliveries(db.alias, len(deliveries), len(notes)), params)
        written = cursor.fetchall()
    if notes:
        # Each row led by its kind: 0 a delivery, 1 a note.
        by_kind = ([row[1:] for row in written if row[0] == 0], [row[1:] for row in written if row[0] == 1])
    else:
        by_kind = (written, [])
    event.pk = (by_kind[0] or by_kind[1])[0][0]
    row_saved(event, db.alias)
    for rows, ids in zip((deliveries, notes), by_kind, strict=True):
        for row, (event_id, pk) in zip(rows, ids, strict=True):
            row.pk = pk
            row.event_id = event_id
            row_saved(row, db.alias)


def _route(events: list[Event], subscriptions: list[Subscription]) -> list[list[Subscription]]:
    """Who wants each event; an event nobody wants is unrouted (and one routed again, queued)."""
    wanted = [subscriptions_for_event(event=event, subscriptions=subscriptions) for event in events]
    for event, subs in zip(events, wanted, strict=True):
        event.status = EventStatus.QUEUED if subs else EventStatus.UNROUTED
    return wanted


def _subscriptions_kept(ids: list[int]) -> bool:
    """Whether every one of these subscriptions still exists, locked against deletion until the
    transaction ends (FOR KEY SHARE: the claim's FOR NO KEY UPDATE does not wait for it)."""
    wanted = set(ids)
    if not wanted:
        return True
    with connection.cursor() as cursor:
        statement = sql.subscriptions_kept(len(wanted), postgresql=connection.features.has_select_for_update)
        cursor.execute(statement, sorted(wanted))
        return {row[0] for row in cursor.fetchall()} == wanted
