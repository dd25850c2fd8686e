"""Writing events: an envelope made into an event, stored once per (store, message_id); the
budget of descendants replies draw on; a store's token and state."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import F, Model
from django.utils import timezone
from psycopg.types.json import Json

from events import sql
from events.instances import instance_new
from events.messages import resource_key
from events.models import Event, EventDescendants, EventSource, Store
from events.selectors import store_cache_clear
from events.validation import Envelope
from infra import tracing


@dataclass(frozen=True)
class IngestResult:
    event: Event
    created: bool


def event_build(
    *,
    store: Store | None,
    envelope: Envelope,
    parent: Event | None = None,
    origin: str = "",
    source: EventSource | None = None,
) -> Event:
    """The event an envelope makes, not yet saved (routing reads it to decide its status first).
    Its source is the store's or, with a parent, a reply's, unless `source` says otherwise."""
    event = instance_new(
        Event,
        store=store,
        message=envelope.message,
        payload=envelope.payload,
        resource_key=resource_key(envelope.message, envelope.payload),
        source=source or (EventSource.STORE if parent is None else EventSource.REPLY),
        origin=origin,
        parent=parent,
        depth=0 if parent is None else parent.depth + 1,
    )
    event.message_id = envelope.message_id or event.uid.hex
    # Not a field: the payload's JSON text as validation wrote it, taken by the INSERT. Nothing may
    # change event.payload in between, or the INSERT would store the text as it was validated.
    event.payload_json = envelope.payload_json
    event.traceparent = tracing.event_traceparent(event)
    return event


def _event_row_insert(event: Event) -> None:
    """INSERT one built event and give it its id: what event.save(force_insert=True) does, without
    the model save machinery around the statement (signals, the SQL compiler building the same
    INSERT again for every push). Event has no signal receivers, and every column's value goes
    through its field as save() would send it."""
    connection = connections[router.db_for_write(Event)]
    if not connection.features.can_return_columns_from_insert:
        event.save(force_insert=True)
        return
    statement = sql.for_cursor(connection, sql.event_insert(connection.alias, 1, skip_conflicts=False))
    with sql.insert_cursor(connection, prepared=settings.DB_PREPARED_STATEMENTS) as cursor:
        cursor.execute(statement, event_values([event], connection, "save"))
        event.pk = cursor.fetchone()[0]
    row_saved(event, connection.alias)


def row_saved(row: Model, alias: str) -> None:
    """A row written by hand, marked as the ORM marks one it saved."""
    row._state.adding = False
    row._state.db = alias


def event_values(events: list[Event], connection: Any, operation: str) -> list[Any]:
    """The parameters of events.sql.event_insert for these events, each value through its field."""
    fields = sql.event_insert_fields()
    params: list[Any] = []
    payload_at = fields.index(Event._meta.get_field("payload"))
    for event in events:
        event._prepare_related_fields_for_save(operation_name=operation)
        values = [field.get_db_prep_save(field.pre_save(event, True), connection) for field in fields]
        written = event.__dict__.pop("payload_json", None)
        if written is not None and isinstance(values[payload_at], Json):
            # PostgreSQL: send the text validation already wrote instead of writing it again.
            values[payload_at] = Json(values[payload_at].obj, dumps=lambda _payload, text=written: text)
        params.extend(values)
    return params


def event_insert(event: Event, *, savepoint: bool = True, write: Callable[[], None] | None = None) -> IngestResult:
    """Save a built event; a repeated (store, message_id) returns the first event, created=False.
    `write` stores it instead of its INSERT alone: routing.outbox writes its deliveries with it.

    Must run inside the caller's transaction when routing has to be atomic with it; the insert
    itself sits in a savepoint so a duplicate does not poison that transaction. Without the
    savepoint a repeat raises IntegrityError, and the caller rolls back and looks the first one up.
    """
    write = write or functools.partial(_event_row_insert, event)
    if not savepoint:
        write()
        return IngestResult(event, created=True)
    # No look-up first: the insert itself finds a repeated (store, message_id) through the unique
    # constraint, which saves a round trip on every new event (the common case) and is the only
    # check that holds under concurrent pushes anyway.
    try:
        with transaction.atomic():
            write()
    except IntegrityError:
        # A repeated message_id (pushed earlier, or concurrently by a push that won the race):
        # answer with the first event.
        existing = Event.objects.filter(store=event.store, message_id=event.message_id).first()
        if existing is None:
            raise
        return IngestResult(existing, created=False)
    return IngestResult(event, created=True)


def events_insert(*, store: Store, events: list[Event]) -> list[IngestResult]:
    """Save a store's batch of built events with one multi-row INSERT; one result per event, in
    order, exactly as event_insert one by one would give (a message_id already stored, or repeated
    within the batch, answers with the first event).

    Must run inside the caller's transaction. The INSERT skips a message_id that is already stored
    (ON CONFLICT DO NOTHING) and returns the ids of the rows it wrote, so the common batch, all
    new, is one statement: no look-up before it and no savepoint around it. Only the skipped ones
    are looked up after it; should one of them not be found (the conflict was not a stored
    message_id), it goes in on its own through event_insert, which raises what it raises.
    A concurrent push of the same message_id is waited for by PostgreSQL: skipped and found if it
    commits, written here if it rolls back.
    """
    first: dict[str, Event] = {}
    for event in events:
        first.setdefault(event.message_id, event)
    written = _events_insert_new(list(first.values()))
    skipped = [message_id for message_id in first if message_id not in written]
    stored = {e.message_id: e for e in Event.objects.filter(store=store, message_id__in=skipped)} if skipped else {}
    for message_id in skipped:
        if message_id not in stored:
            result = event_insert(event_unsaved(first[message_id]))
            if result.created:
                written.add(message_id)
            else:
                stored[message_id] = result.event
    return [
        IngestResult(stored[e.message_id], created=False)
        if e.message_id in stored
        else IngestResult(first[e.message_id], created=first[e.message_id] is e)
        for e in events
    ]


def _events_insert_new(events: list[Event]) -> set[str]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, message_id: the message_ids written, each
    event written given its id as bulk_create would."""
    connection = connections[router.db_for_write(Event)]
    if not connection.features.can_return_rows_from_bulk_insert:
        # A database that cannot return a multi-row INSERT's rows: one by one, each in a savepoint.
        return _events_insert_one_by_one(events)
    statement = sql.for_cursor(connection, sql.event_insert(connection.alias, len(events), skip_conflicts=True))
    try:
        # A savepoint: on partitioned PostgreSQL the key table's trigger refuses a stored message_id
        # with an error, which ON CONFLICT does not skip (docs/storage.md).
        with transaction.atomic(), sql.insert_cursor(connection) as cursor:
            cursor.execute(statement, event_values(events, connection, "bulk_create"))
            ids = {message_id: pk for pk, message_id in cursor.fetchall()}
    except IntegrityError:
        return _events_insert_one_by_one([event_unsaved(event) for event in events])
    for event in events:
        pk = ids.get(event.message_id)
        if pk is not None:
            event.pk = pk
            row_saved(event, connection.alias)
    return set(ids)


def _events_insert_one_by_one(events: list[Event]) -> set[str]:
    written: set[str] = set()
    for event in events:
        try:
            with transaction.atomic():
                _event_row_insert(event)
        except IntegrityError:
            event_unsaved(event)
        else:
            written.add(event.message_id)
    return written


def event_unsaved(event: Event) -> Event:
    """The event as built, whatever a failed insert left on it (to be inserted again)."""
    event.pk = None
    event._state.adding = True
    return event


def event_roots(events: Iterable[Event]) -> dict[int, int]:
    """The root (the ancestor with no parent) of each event, by event id; a root is its own.
    One look-up per generation, so at most HUB_MAX_EVENT_DEPTH of them."""
    roots: dict[int, int] = {}
    # Each event's highest ancestor found so far.
    climbing: dict[int, int] = {}
    for event in events:
        if event.parent_id is None:
            roots[event.pk] = event.pk
        else:
            climbing[event.pk] = event.parent_id
    while climbing:
        parents = dict(Event.objects.filter(pk__in=set(climbing.values())).values_list("pk", "parent_id"))
        higher: dict[int, int] = {}
        for event_id, ancestor in climbing.items():
            above = parents.get(ancestor)
            if above is None:
                roots[event_id] = ancestor
            else:
                higher[event_id] = above
        climbing = higher
    return roots


def descendants_reserve(wanted: Mapping[int, int], *, budget: int) -> dict[int, int]:
    """Take up to `wanted[root]` events from each root event's budget of descendants and return
    how many each got: what is left when that is less, 0 once it is spent.

    Counted in the caller's transaction, so a rollback gives them back. The counters are locked in
    root order and held to its end: workers recording replies under one root at once take turns,
    and none can grant what another already took, on any database (SQLite locks it whole)."""
    roots = sorted(root for root, count in wanted.items() if count > 0)
    if not roots:
        return {}
    granted: dict[int, int] = {}
    with transaction.atomic():
        EventDescendants.objects.bulk_create([EventDescendants(root_id=root) for root in roots], ignore_conflicts=True)
        counters = EventDescendants.objects.select_for_update().filter(root_id__in=roots).order_by("root_id")
        for root, spent in counters.values_list("root_id", "count"):
            granted[root] = max(0, min(wanted[root], budget - spent))
            if granted[root]:
                EventDescendants.objects.filter(root_id=root).update(count=F("count") + granted[root])
    return granted


def store_token_rotate(*, store: Store, grace_seconds: int | None = None) -> str:
    """Give the store a new token and return it in clear (the only time it is seen).

    The old token keeps working for `grace_seconds` (settings.HUB_TOKEN_ROTATION_GRACE_SECONDS by
    default) so the store can be reconfigured without losing pushes; 0 revokes it at once. A token
    still in an earlier grace period is dropped: only one previous token is ever honoured.
    """
    grace = settings.HUB_TOKEN_ROTATION_GRACE_SECONDS if grace_seconds is None else grace_seconds
    if grace < 0:
        raise ValueError("grace_seconds must not be negative.")
    with transaction.atomic():
        locked = Store.objects.select_for_update().get(pk=store.pk)
        if grace > 0:
            locked.previous_token_hash = locked.token_hash
            locked.previous_token_expires_at = timezone.now() + timedelta(seconds=grace)
        else:
            locked.previous_token_hash = ""
            locked.previous_token_expires_at = None
        token = locked.token_set_new()
        locked.save(update_fields=["token_hash", "token_hint", "previous_token_hash", "previous_token_expires_at"])
    for name in ("token_hash", "token_hint", "previous_token_hash", "previous_token_expires_at"):
        setattr(store, name, getattr(locked, name))
    # This process stops taking a revoked token at once; the others within HUB_STORE_AUTH_CACHE_SECONDS.
    store_cache_clear()
    return token


def store_set_active(*, store_id: int, active: bool) -> bool:
    """Enable or disable a store; a disabled store's pushes are refused. False when nothing changed."""
    changed = bool(Store.objects.filter(pk=store_id).exclude(is_active=active).update(is_active=active))
    # This process sees the change at once; the others within HUB_STORE_AUTH_CACHE_SECONDS.
    store_cache_clear()
    return changed
