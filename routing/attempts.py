"""What follows an attempt: the endpoint's standing (failing, disabled), what it replied (PROTOCOL
§3), and the event's status; and the rules that say which delivery may go (order, in-flight limit).
Sending itself, a batch at a time, is routing.pump."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import connection, transaction

from events.errors import HubError
from events.models import Event, EventStatus
from events.services import Envelope, descendants_reserve, envelope_validate, event_roots, json_type
from routing.models import (
    Delivery,
    DeliveryState,
    Notification,
    NotificationLevel,
    Subscription,
)
from routing.returned_objects import ObjectsRead, objects_read, objects_take_in
from routing.rows import placeholders

logger = logging.getLogger(__name__)

# An endpoint may say a lot; past these we keep the first ones and note that the rest were dropped.
REPLY_MAX_NOTIFICATIONS = 50
REPLY_MAX_MESSAGES = 100
_LEVELS = {
    "info": NotificationLevel.INFO,
    "warn": NotificationLevel.WARN,
    "warning": NotificationLevel.WARN,
    "error": NotificationLevel.ERROR,
}


def subscription_max_in_flight(subscription: Subscription) -> int:
    """How many deliveries may be on the wire to this endpoint at once; 0 for no limit."""
    if subscription.max_in_flight is not None:
        return subscription.max_in_flight
    return settings.HUB_SUBSCRIPTION_MAX_IN_FLIGHT


class _AttemptLike(Protocol):
    succeeded: bool
    status_code: int | None
    error: str


def attempt_outcome(result: _AttemptLike) -> str:
    """A small, fixed vocabulary for what kind of thing happened on the wire, of an exchange or a
    recorded Attempt: the metrics label, and what a store is told instead of the error text (which
    can name the endpoint's host, port and path)."""
    if result.succeeded:
        return "success"
    if result.status_code is None:
        return "timeout" if "timed out" in result.error.lower() else "connection_error"
    if 200 <= result.status_code < 300:
        return "invalid_reply"
    return "http_error"


def subscription_failing(*, subscription: Subscription, now: Any, delivery: Delivery) -> None:
    Subscription.objects.filter(pk=subscription.pk, failing_since__isnull=True).update(failing_since=now)
    since = Subscription.objects.filter(pk=subscription.pk).values_list("failing_since", flat=True).get()
    limit = timedelta(seconds=settings.HUB_SUBSCRIPTION_DISABLE_AFTER_SECONDS)
    if since is not None and now - since >= limit:
        subscription_disable(
            subscription_id=subscription.pk,
            reason=f"the endpoint has failed every attempt since {since:%Y-%m-%d %H:%M} UTC",
            event=None,
            delivery=delivery,
        )


def subscription_disable(
    *, subscription_id: int, reason: str, event: Event | None = None, delivery: Delivery | None = None
) -> bool:
    """Turn an endpoint off and say why where the admin looks; False when it was already off."""
    changed = Subscription.objects.filter(pk=subscription_id, is_enabled=True).update(
        is_enabled=False, disabled_reason=reason[:200]
    )
    if changed:
        Notification.objects.create(
            subscription_id=subscription_id,
            event=event,
            delivery=delivery,
            level=NotificationLevel.ERROR,
            subject="Subscription disabled",
            description=f"Disabled because {reason}. Fix the endpoint, then enable the subscription again.",
            resource_key=event.resource_key if event is not None else None,
        )
        logger.warning("subscription disabled", extra={"subscription_id": subscription_id, "reason": reason})
    return bool(changed)


class ParametersRefused(ValueError):
    """The parameters a reply returned would make the subscription's too many or too large."""


@dataclass
class _Reply:
    """One reply to take in, with its onward messages read before any of them is stored."""

    delivery: Delivery
    body: Mapping[str, Any]
    # The valid onward messages within the per-reply cap and the depth limit, in order.
    envelopes: list[Envelope] = field(default_factory=list)
    # (position in the reply, why) for each onward message that is not valid.
    invalid: list[tuple[int, str]] = field(default_factory=list)
    # Objects returned by plural type (routing.returned_objects), after the envelopes in the budget.
    objects: ObjectsRead = field(default_factory=ObjectsRead)
    # How many of the envelopes, then of the objects, the root event's budget of descendants let through.
    granted: int = 0

    @property
    def wanted(self) -> int:
        return len(self.envelopes) + len(self.objects.envelopes)


def replies_process(replies: Sequence[tuple[Delivery, Mapping[str, Any]]]) -> None:
    """PROTOCOL §3: store notifications, route returned messages onward, keep returned parameters.

    The onward messages of all the replies are taken from their root events' budgets of
    descendants (HUB_MAX_DESCENDANTS) at once, before anything else is locked: a batch locks the
    budgets, then subscriptions, then events, and two batches cannot wait on each other."""
    taken = [_reply_read(delivery, body) for delivery, body in replies]
    wanted = [r for r in taken if r.wanted]
    if wanted:
        roots = event_roots(r.delivery.event for r in wanted)
        demand: dict[int, int] = {}
        for r in wanted:
            root = roots[r.delivery.event_id]
            demand[root] = demand.get(root, 0) + r.wanted
        left = descendants_reserve(demand, budget=settings.HUB_MAX_DESCENDANTS)
        # What a root was granted goes to its replies in the order they came.
        for r in wanted:
            root = roots[r.delivery.event_id]
            r.granted = min(r.wanted, left.get(root, 0))
            left[root] = left.get(root, 0) - r.granted
    for r in taken:
        _reply_take_in(r)


def _reply_read(delivery: Delivery, body: Mapping[str, Any]) -> _Reply:
    reply = _Reply(delivery=delivery, body=body)
    messages = body.get("messages")
    if isinstance(messages, list) and delivery.event.depth + 1 <= settings.HUB_MAX_EVENT_DEPTH:
        for index, item in enumerate(messages[:REPLY_MAX_MESSAGES]):
            try:
                reply.envelopes.append(envelope_validate(item))
            except HubError as exc:
                reply.invalid.append((index, exc.detail))
    if delivery.event.depth + 1 <= settings.HUB_MAX_EVENT_DEPTH:
        reply.objects = objects_read(subscription=delivery.subscription, body=body)
    return reply


def _reply_take_in(r: _Reply) -> None:
    from routing.services import event_accept

    event = r.delivery.event
    sub = r.delivery.subscription
    reply = r.body

    def note(level: str, subject: str, description: str = "") -> None:
        Notification.objects.create(
            event=event,
            delivery=r.delivery,
            subscription=sub,
            level=level,
            subject=subject[:200],
            description=description,
            resource_key=event.resource_key,
        )

    for key in ("notifications", "messages", "parameters"):
        value = reply.get(key)
        if value not in (None, [], {}, "") and not isinstance(value, list):
            # Read past, it would be lost without a word: say so where the event's notes are shown.
            note(
                NotificationLevel.WARN,
                f"The reply's '{key}' was not read",
                f"'{key}' must be a JSON array (PROTOCOL §3), not {json_type(value)}.",
            )

    notifications = reply.get("notifications")
    if isinstance(notifications, list):
        for item in notifications[:REPLY_MAX_NOTIFICATIONS]:
            if not isinstance(item, Mapping):
                continue
            level = _LEVELS.get(str(item.get("level", "info")).strip().lower(), NotificationLevel.INFO)
            subject = str(item.get("subject") or "").strip() or "(no subject)"
            note(level, subject, str(item.get("description") or ""))
        if len(notifications) > REPLY_MAX_NOTIFICATIONS:
            note(NotificationLevel.WARN, f"{len(notifications) - REPLY_MAX_NOTIFICATIONS} notifications dropped")

    messages = reply.get("messages")
    if isinstance(messages, list) and messages:
        if event.depth + 1 > settings.HUB_MAX_EVENT_DEPTH:
            note(
                NotificationLevel.WARN,
                f"{len(messages)} returned message(s) not routed",
                f"Events returned in reply may nest {settings.HUB_MAX_EVENT_DEPTH} deep; this one is at "
                f"depth {event.depth}.",
            )
        else:
            for index, detail in r.invalid:
                note(NotificationLevel.WARN, f"Returned message {index + 1} ignored", detail)
            for envelope in r.envelopes[: r.granted]:
                event_accept(store=None, envelope=envelope, parent=event, origin=f"subscription:{sub.pk}")
            over = max(0, len(r.envelopes) - r.granted)
            if over:
                budget = settings.HUB_MAX_DESCENDANTS
                note(
                    NotificationLevel.ERROR,
                    f"{over} onward message{'s' if over > 1 else ''} dropped: the root event's budget of {budget} "
                    "descendants is spent",
                    f"{over} of the {len(r.envelopes)} valid messages this reply returned were not made into "
                    f"events. Replies may make at most {budget} events under one event a store pushed, at any "
                    "depth (HUB_MAX_DESCENDANTS); two endpoints answering each other's messages reach it soon.",
                )
            if len(messages) > REPLY_MAX_MESSAGES:
                note(NotificationLevel.WARN, f"{len(messages) - REPLY_MAX_MESSAGES} returned messages dropped")

    left_out = objects_take_in(
        event=event,
        subscription=sub,
        read=r.objects,
        granted=r.granted - min(r.granted, len(r.envelopes)),
        note=note,
    )

    parameters = reply.get("parameters")
    if isinstance(parameters, list) and parameters and left_out:
        # A `since` moved past objects that made no event would skip them for good.
        note(
            NotificationLevel.ERROR,
            "The reply's parameters were not stored",
            f"{left_out} of the new objects it returned were not made into events; with the parameters as "
            "they were, the next request asks for them again.",
        )
    elif isinstance(parameters, list) and parameters:
        try:
            subscription_parameters_merge(subscription_id=sub.pk, parameters=parameters)
        except ParametersRefused as exc:
            note(NotificationLevel.ERROR, "The reply's parameters were not stored", str(exc))


def subscription_parameters_merge(*, subscription_id: int, parameters: list[Any]) -> list[dict[str, Any]]:
    """Returned parameters replace those of the same name and add new ones; the rest stay.

    Every later delivery to the endpoint carries them all, so a merge that would leave more than
    HUB_MAX_PARAMETERS of them, or more than HUB_MAX_PARAMETERS_BYTES of JSON, is refused whole
    (ParametersRefused, saying which): nothing of it is stored."""
    # FOR NO KEY UPDATE: a plain FOR UPDATE would also wait for, and block, the deliveries being
    # made to this subscription (their foreign key's share lock), by another reply's events too.
    sub = Subscription.objects.select_for_update(no_key=True).get(pk=subscription_id)
    merged: dict[str, Any] = {}
    for item in list(sub.parameters or []) + parameters:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"]:
            merged[item["name"]] = item.get("value")
    result = [{"name": name, "value": value} for name, value in merged.items()]
    if result != sub.parameters:
        _parameters_check(result, returned=len(parameters))
        Subscription.objects.filter(pk=subscription_id).update(parameters=result)
    return result


def _parameters_check(parameters: list[dict[str, Any]], *, returned: int) -> None:
    limit = settings.HUB_MAX_PARAMETERS
    if len(parameters) > limit:
        raise ParametersRefused(
            f"With the {returned} parameters this reply returned the subscription would hold {len(parameters)}; "
            f"at most {limit} are kept (HUB_MAX_PARAMETERS). Nothing of the reply's parameters was stored."
        )
    size = len(json.dumps(parameters, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace"))
    limit = settings.HUB_MAX_PARAMETERS_BYTES
    if size > limit:
        raise ParametersRefused(
            f"With the {returned} parameters this reply returned the subscription's parameters would take "
            f"{size} bytes of JSON; at most {limit} are kept (HUB_MAX_PARAMETERS_BYTES), and every delivery "
            "carries them. Nothing of the reply's parameters was stored."
        )


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
    open_states = {DeliveryState.PENDING, DeliveryState.RETRYING, DeliveryState.DELIVERING}
    if any(state in open_states for state, _ in live):
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

    Written-out SQL: every batch a pump records ends here, and the ORM took three times as long
    to compile the locking join and the UPDATE as PostgreSQL to run them (2.2 ms of CPU for one
    event on a slow day)."""
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
