"""Objects an endpoint returns by plural type (`"orders": [...]`, `"shipments": [...]`), as the
Spree hub's newer endpoints answer a pull or a push: one onward event per object, named by the
subscription (or `<type>:new` the first time an object is seen, `<type>:updated` after), with an
idempotency key made of the object's type, id and a digest of its content. An object returned
again unchanged makes no second event; each (key, digest) is claimed in the database, in the
transaction that records the reply, so two replies carrying it at once make one event between them.

Read with the reply's `messages` (routing.replies) and taken from the same budget of descendants.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.utils import timezone

from events.errors import HubError
from events.models import Event
from events.validation import Envelope, envelope_validate, json_type
from routing import sql
from routing.models import NotificationLevel, ReturnedObject, Subscription
from routing.outbox import event_accept
from routing.returned_types import object_type_singular, returned_types

# How many invalid objects a reply's notification names before it only counts them.
_INVALID_NAMED = 5


def object_digest(obj: Any) -> str:
    """SHA-256 of the object's JSON with sorted keys: the same content, whatever its key order."""
    try:
        text = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        import json

        text = json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(text).hexdigest()


def object_key(plural: str, obj: Mapping[str, Any]) -> str:
    """The object's type and id (`id`, else `number`), or the type alone for an object without one."""
    for name in ("id", "number"):
        value = obj.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return f"{plural}:{str(value).strip()}"[:200]
    return f"{plural}:"


@dataclass
class ObjectsRead:
    """A reply's returned objects, read before anything is stored."""

    # One valid envelope per object not seen before, in the reply's order, with its (key, digest).
    envelopes: list[Envelope] = field(default_factory=list)
    keys: list[tuple[str, str]] = field(default_factory=list)
    # (where in the reply, why) for each object that makes no event.
    invalid: list[tuple[str, str]] = field(default_factory=list)
    # Returned before (or twice in this reply) unchanged.
    unchanged: int = 0
    # New ones past HUB_REPLY_MAX_OBJECTS.
    dropped: int = 0


def objects_read(*, subscription: Subscription, body: Any) -> ObjectsRead:
    """Each new returned object as the envelope of its onward event: the unchanged ones are left
    out first, then what is past HUB_REPLY_MAX_OBJECTS, so that an endpoint returning more than
    that gets the rest made by its next replies."""
    read = ObjectsRead()
    keyed: list[tuple[str, int, Mapping[str, Any], str, str]] = []
    for plural in returned_types(body):
        for index, obj in enumerate(body[plural]):
            if not isinstance(obj, Mapping):
                read.invalid.append((f"{plural}[{index}]", f"an object must be a JSON object, not {json_type(obj)}"))
                continue
            keyed.append((plural, index, obj, object_key(plural, obj), object_digest(obj)))
    seen, known = _objects_seen(subscription.pk, {key for *_, key, _ in keyed})
    fresh = []
    for item in keyed:
        pair = (item[3], item[4])
        if pair in seen:
            read.unchanged += 1
            continue
        seen.add(pair)
        fresh.append(item)
    limit = settings.HUB_REPLY_MAX_OBJECTS
    read.dropped = max(0, len(fresh) - limit)
    names: Mapping[str, Any] = subscription.object_messages or {}
    for plural, index, obj, key, digest in fresh[:limit]:
        singular = object_type_singular(plural)
        action = "updated" if key in known and not key.endswith(":") else "new"
        known.add(key)
        message = names.get(plural) or f"{singular}:{action}"
        try:
            envelope = envelope_validate(
                {"message": message, "message_id": f"{key}:{digest[:16]}", "payload": {singular: dict(obj)}}
            )
        except HubError as exc:
            read.invalid.append((f"{plural}[{index}]", exc.detail))
            continue
        read.envelopes.append(envelope)
        read.keys.append((key, digest))
    return read


def _objects_seen(subscription_id: int, keys: set[str]) -> tuple[set[tuple[str, str]], set[str]]:
    """(key, digest) pairs already returned by this endpoint, and the keys among them."""
    pairs: set[tuple[str, str]] = set()
    ordered = sorted(keys)
    for start in range(0, len(ordered), 1000):
        rows = ReturnedObject.objects.filter(subscription_id=subscription_id, key__in=ordered[start : start + 1000])
        pairs.update(rows.values_list("key", "digest"))
    return pairs, {key for key, _ in pairs}


def objects_claim(subscription_id: int, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Record each (key, digest) for the endpoint, and return those this call recorded: a pair
    recorded meanwhile by another reply (or earlier in this one) is that reply's to make an event of.
    Runs in the caller's transaction: should it roll back, no pair stays claimed."""
    claimed: set[tuple[str, str]] = set()
    now = timezone.now()
    unique = list(dict.fromkeys(pairs))
    for start in range(0, len(unique), 200):
        chunk = unique[start : start + 200]
        params: list[Any] = []
        for key, digest in chunk:
            params += [subscription_id, key, digest, now]
        with connection.cursor() as cursor:
            cursor.execute(sql.returned_objects_claim(len(chunk)), params)
            claimed.update((key, digest) for key, digest in cursor.fetchall())
    return claimed


def objects_take_in(
    *,
    event: Event,
    subscription: Subscription,
    read: ObjectsRead,
    granted: int,
    note: Callable[..., None],
) -> int:
    """Make the onward events of the first `granted` objects (what the root's budget allowed) and
    say in the event's notifications what was left out. Returns how many new objects were left out
    (past the cap or the budget): none of them is remembered, so a later reply makes them."""
    for where, why in read.invalid[:_INVALID_NAMED]:
        note(NotificationLevel.WARN, f"Returned object {where} ignored", why)
    if len(read.invalid) > _INVALID_NAMED:
        note(NotificationLevel.WARN, f"{len(read.invalid) - _INVALID_NAMED} more returned objects ignored")
    if read.dropped:
        note(
            NotificationLevel.WARN,
            f"{read.dropped} returned objects dropped",
            f"A reply makes at most {settings.HUB_REPLY_MAX_OBJECTS} new objects into events "
            "(HUB_REPLY_MAX_OBJECTS); the rest are made by the endpoint's next replies.",
        )
    granted = max(0, min(granted, len(read.envelopes)))
    fresh = objects_claim(subscription.pk, read.keys[:granted])
    for envelope, pair in zip(read.envelopes[:granted], read.keys[:granted], strict=True):
        if pair not in fresh:
            continue
        fresh.discard(pair)
        event_accept(store=None, envelope=envelope, parent=event, origin=f"subscription:{subscription.pk}")
    over = len(read.envelopes) - granted
    if over:
        budget = settings.HUB_MAX_DESCENDANTS
        note(
            NotificationLevel.ERROR,
            f"{over} returned object{'s' if over > 1 else ''} not made into events: the root event's budget of "
            f"{budget} descendants is spent",
            f"{over} of the {len(read.envelopes)} new objects this reply returned were not made into events "
            f"(HUB_MAX_DESCENDANTS); they are not marked as seen, so a later reply returning them makes them.",
        )
    return read.dropped + over
