"""Writing events: validate an envelope, store it once per (store, message_id)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import F, Model
from django.utils import timezone

from events.errors import InvalidEnvelope
from events.messages import InvalidMessageName, message_canonical, resource_key
from events.models import Event, EventDescendants, EventSource, Store, payload_orjson
from events.selectors import store_cache_clear
from infra import tracing

MESSAGE_ID_MAX_LENGTH = 255


@dataclass(frozen=True)
class Envelope:
    message: str
    message_id: str | None
    payload: dict[str, Any]
    # The payload as orjson wrote it for the NUL check, handed on to the INSERT so that it is not
    # written twice (None when orjson refused it: json.dumps writes it then, as before).
    payload_json: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class IngestResult:
    event: Event
    created: bool


def envelope_validate(data: Any) -> Envelope:
    """Check the shape of one envelope and return it with the canonical message name."""
    if not isinstance(data, Mapping):
        raise InvalidEnvelope(f"An event must be a JSON object with 'message' and 'payload', not {json_type(data)}.")
    if "message" not in data or data["message"] in (None, ""):
        raise InvalidEnvelope("'message' is required, e.g. \"order:new\".", field="message")
    if not isinstance(data["message"], str):
        raise InvalidEnvelope(f"'message' must be a string, not {json_type(data['message'])}.", field="message")
    try:
        message = message_canonical(data["message"])
    except InvalidMessageName as exc:
        raise InvalidEnvelope(str(exc), field="message") from None

    message_id = data.get("message_id")
    if message_id is not None:
        if isinstance(message_id, bool) or not isinstance(message_id, (str, int)):
            raise InvalidEnvelope(f"'message_id' must be a string, not {json_type(message_id)}.", field="message_id")
        message_id = str(message_id).strip()
        if not message_id:
            raise InvalidEnvelope("'message_id' must not be empty; leave it out to have one made.", field="message_id")
        if "\x00" in message_id:
            raise InvalidEnvelope("'message_id' must not contain the NUL character (\\u0000).", field="message_id")
        if len(message_id) > MESSAGE_ID_MAX_LENGTH:
            raise InvalidEnvelope(
                f"'message_id' is longer than {MESSAGE_ID_MAX_LENGTH} characters.", field="message_id"
            )

    if "payload" not in data:
        raise InvalidEnvelope("'payload' is required and must be a JSON object.", field="payload")
    payload = data["payload"]
    if not isinstance(payload, Mapping):
        raise InvalidEnvelope(f"'payload' must be a JSON object, not {json_type(payload)}.", field="payload")
    # The payload's text as the INSERT will send it; a NUL character, in a key or a string, is
    # found in it in C: orjson writes one as backslash-u0000, and only text holding that (a NUL, or
    # those six characters themselves) or what orjson does not write (None) needs the walk in
    # Python that names where it is; walking every payload took about a millisecond per event.
    payload_json = payload_orjson(payload)
    nul_at = _nul_path(payload) if payload_json is None or _NUL_ESCAPE in payload_json else None
    if nul_at is not None:
        # PostgreSQL cannot hold NUL as text or jsonb (the json column keeps the escape, but a payload
        # with it could not go back to jsonb, events.0007); refusing it everywhere keeps SQLite and
        # PostgreSQL alike.
        raise InvalidEnvelope(
            f"'payload' contains the NUL character (\\u0000) at '{nul_at}', which the hub cannot store.",
            field="payload",
        )
    return Envelope(message=message, message_id=message_id, payload=dict(payload), payload_json=payload_json)


def _nul_path(payload: Mapping[str, Any]) -> str | None:
    """The dotted path of the first key or string holding a NUL character, or None."""
    stack: list[tuple[Any, str]] = [(payload, "payload")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return path
        elif isinstance(value, Mapping):
            for key, child in value.items():
                if "\x00" in key:
                    return f"{path}.{key!r}"
                stack.append((child, f"{path}.{key}"))
        elif isinstance(value, list):
            stack.extend((child, f"{path}.{index}") for index, child in enumerate(value))
    return None


# How orjson writes a NUL character, in a key or a string: JSON has no other way to carry one.
_NUL_ESCAPE = b"\\u0000"


def json_type(value: Any) -> str:
    """What a parsed JSON value is, as an error message names it: "an object", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def event_build(
    *,
    store: Store | None,
    envelope: Envelope,
    parent: Event | None = None,
    origin: str = "",
) -> Event:
    """The event an envelope makes, not yet saved (routing reads it to decide its status first)."""
    event = Event(
        store=store,
        message=envelope.message,
        payload=envelope.payload,
        resource_key=resource_key(envelope.message, envelope.payload),
        source=EventSource.STORE if parent is None else EventSource.REPLY,
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


def event_row_insert(event: Event, *, dependents: Sequence[Model] = ()) -> None:
    """INSERT one built event and give it its id: what event.save(force_insert=True) does, without
    the model save machinery around the statement (signals, the SQL compiler building the same
    INSERT again for every push: a quarter of the insert's Python time). Event has no signal
    receivers, and every column's value goes through its field as save() would send it.

    `dependents` are unsaved rows of one model that point at the event by their foreign key to it
    (routing's deliveries); they are written with it, all or nothing, and given their ids. On
    PostgreSQL one statement writes both (the event's INSERT in a WITH, the rows taking its id),
    atomic in autocommit: a routed push is one round trip instead of BEGIN, two INSERTs and
    COMMIT. Elsewhere a transaction holds the event's INSERT and the rows' bulk_create."""
    connection = connections[router.db_for_write(Event)]
    if dependents and not _server_bound(connection):
        with transaction.atomic(using=connection.alias):
            event_row_insert(event)
            type(dependents[0])._default_manager.bulk_create(dependents)
        return
    if not connection.features.can_return_columns_from_insert:
        event.save(force_insert=True)
        return
    if dependents:
        model = type(dependents[0])
        sql, fields, dependent_fields, link = _event_with_rows_statement(
            connection.alias, model._meta.label, len(dependents)
        )
    else:
        sql, fields = _event_insert_statement(connection, rows=1, skip_conflicts=False)
    params = _event_insert_params([event], fields, connection, "save")
    for row in dependents:
        # Not _prepare_related_fields_for_save: it refuses the event, unsaved until this statement.
        params.extend(field.get_db_prep_save(field.pre_save(row, True), connection) for field in dependent_fields)
    with _insert_cursor(connection, prepared=settings.DB_PREPARED_STATEMENTS) as cursor:
        cursor.execute(sql, params)
        written = cursor.fetchall()
    event.pk = written[0][0]
    _row_saved(event, connection.alias)
    if dependents:
        for row, (event_id, pk) in zip(dependents, written, strict=True):
            row.pk = pk
            setattr(row, link, event_id)
            _row_saved(row, connection.alias)


def _row_saved(row: Model, alias: str) -> None:
    row._state.adding = False
    row._state.db = alias


@functools.lru_cache(maxsize=64)
def _event_with_rows_statement(alias: str, label: str, count: int) -> tuple[str, list[Any], list[Any], str]:
    """WITH event AS (the single-event INSERT) INSERT INTO <model> (its foreign key to the event,
    every other column but id) VALUES ((SELECT id FROM event), $n, ...) x count RETURNING the
    event's id and each row's; for the server-bound cursor. VALUES straight into the table, so
    that PostgreSQL takes every parameter's type from its column. Also the event fields, the
    rows' fields, and the attribute of the rows' foreign key to the event."""
    from django.apps import apps

    model = apps.get_model(label)
    event_sql, event_fields = _event_insert_statement_made(alias, 1, False, True)
    (link,) = [f for f in model._meta.concrete_fields if f.is_relation and f.related_model is Event]
    fields = [f for f in model._meta.concrete_fields if not f.primary_key and not f.generated and f is not link]
    quote = connections[alias].ops.quote_name
    numbers = iter(range(len(event_fields) + 1, len(event_fields) + count * len(fields) + 1))
    event_id = f"(SELECT {quote(Event._meta.pk.column)} FROM event)"
    values = ", ".join("(" + ", ".join([event_id, *(f"${next(numbers)}" for _ in fields)]) + ")" for _ in range(count))
    sql = "WITH event AS ({}) INSERT INTO {} ({}) VALUES {} RETURNING {}, {}".format(
        event_sql,
        quote(model._meta.db_table),
        ", ".join(quote(f.column) for f in [link, *fields]),
        values,
        quote(link.column),
        quote(model._meta.pk.column),
    )
    return sql, event_fields, fields, link.attname


def _event_insert_params(events: list[Event], fields: list[Any], connection: Any, operation: str) -> list[Any]:
    params: list[Any] = []
    payload_at = fields.index(Event._meta.get_field("payload"))
    for event in events:
        event._prepare_related_fields_for_save(operation_name=operation)
        values = [field.get_db_prep_save(field.pre_save(event, True), connection) for field in fields]
        written = event.__dict__.pop("payload_json", None)
        if written is not None and hasattr(values[payload_at], "dumps"):
            # psycopg's Json wrapper (PostgreSQL): send the text validation already wrote
            # instead of writing the same 8.5 KB again (a sixth of a batch request's web time).
            values[payload_at].dumps = lambda _payload, text=written: text
        params.extend(values)
    return params


def _server_bound(connection: Any) -> bool:
    """Whether the backend has the server-bound cursor ($n placeholders, parameters sent apart
    from the statement: integrator/postgresql); the INSERT's text and its cursor both ask."""
    return hasattr(connection, "cursor_server_bound")


def _insert_cursor(connection: Any, *, prepared: bool = False) -> Any:
    """The server-bound cursor where the backend has one (prepared when asked: the single-event
    INSERT, one statement every push runs), or the connection's own cursor (%s)."""
    return connection.cursor_server_bound(prepared=prepared) if _server_bound(connection) else connection.cursor()


def _event_insert_statement(connection: Any, *, rows: int, skip_conflicts: bool) -> tuple[str, list[Any]]:
    """INSERT INTO events_event (every column but id) VALUES (...) x rows, optionally skipping
    rows whose (store, message_id) or uid is taken, RETURNING id, message_id; written for the
    cursor _insert_cursor gives."""
    return _event_insert_statement_made(connection.alias, rows, skip_conflicts, _server_bound(connection))


# The texts for the 64 batch sizes seen most recently (a 100-event batch's took 0.2 ms to write,
# on every request); ~80 bytes a row, so a store sending every size up to HUB_MAX_BATCH_SIZE
# cannot make a process keep them all.
@functools.lru_cache(maxsize=64)
def _event_insert_statement_made(
    alias: str, rows: int, skip_conflicts: bool, server_bound: bool
) -> tuple[str, list[Any]]:
    meta = Event._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key and not f.generated]
    quote = connections[alias].ops.quote_name
    width = len(fields)
    if server_bound:
        numbers = iter(range(1, rows * width + 1))
        values = ", ".join("(" + ", ".join(f"${next(numbers)}" for _ in fields) + ")" for _ in range(rows))
    else:
        values = ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * rows)
    sql = "INSERT INTO {} ({}) VALUES {}{} RETURNING {}, {}".format(
        quote(meta.db_table),
        ", ".join(quote(f.column) for f in fields),
        values,
        " ON CONFLICT DO NOTHING" if skip_conflicts else "",
        quote(meta.pk.column),
        quote(meta.get_field("message_id").column),
    )
    return sql, fields


def event_insert(event: Event, *, savepoint: bool = True, dependents: Sequence[Model] = ()) -> IngestResult:
    """Save a built event (with `dependents`: see event_row_insert); a repeated (store,
    message_id) returns the first event, created=False, and writes none of them.

    Must run inside the caller's transaction when routing has to be atomic with it; the insert
    itself sits in a savepoint so a duplicate does not poison that transaction. Without the
    savepoint a repeat raises IntegrityError, and the caller rolls back and looks the first one up.
    """
    if not savepoint:
        event_row_insert(event, dependents=dependents)
        return IngestResult(event, created=True)
    # No look-up first: the insert itself finds a repeated (store, message_id) through the unique
    # constraint, which saves a round trip on every new event (the common case) and is the only
    # check that holds under concurrent pushes anyway.
    try:
        with transaction.atomic():
            event_row_insert(event, dependents=dependents)
    except IntegrityError:
        # A repeated message_id (pushed earlier, or concurrently by a push that won the race):
        # answer with the first event.
        existing = Event.objects.filter(store=event.store, message_id=event.message_id).first()
        if existing is None:
            raise
        return IngestResult(existing, created=False)
    return IngestResult(event, created=True)


def event_ingest(
    *,
    store: Store | None,
    envelope: Envelope,
    parent: Event | None = None,
    origin: str = "",
) -> IngestResult:
    """Store one event; a repeated (store, message_id) returns the first event, created=False."""
    return event_insert(event_build(store=store, envelope=envelope, parent=parent, origin=origin))


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
        written: set[str] = set()
        for event in events:
            try:
                with transaction.atomic():
                    event_row_insert(event)
            except IntegrityError:
                event_unsaved(event)
            else:
                written.add(event.message_id)
        return written
    sql, fields = _event_insert_statement(connection, rows=len(events), skip_conflicts=True)
    with _insert_cursor(connection) as cursor:
        cursor.execute(sql, _event_insert_params(events, fields, connection, "bulk_create"))
        ids = {message_id: pk for pk, message_id in cursor.fetchall()}
    for event in events:
        pk = ids.get(event.message_id)
        if pk is not None:
            event.pk = pk
            _row_saved(event, connection.alias)
    return set(ids)


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
