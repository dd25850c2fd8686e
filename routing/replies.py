"""What an endpoint replied (PROTOCOL §3): notifications stored, onward messages accepted as new
events through the outbox, returned parameters merged into the subscription."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from events.errors import HubError
from events.services import descendants_reserve, event_roots
from events.validation import Envelope, envelope_validate, json_type
from routing.models import Delivery, Notification, NotificationLevel, Subscription
from routing.outbox import event_accept
from routing.reply_forms import ParametersRefused, parameters_merged, parameters_returned
from routing.returned_objects import ObjectsRead, objects_read, objects_take_in
from routing.returned_types import objects_present

# An endpoint may say a lot; past these we keep the first ones and note that the rest were dropped.
REPLY_MAX_NOTIFICATIONS = 50
REPLY_MAX_MESSAGES = 100
_LEVELS = {
    "info": NotificationLevel.INFO,
    "warn": NotificationLevel.WARN,
    "warning": NotificationLevel.WARN,
    "error": NotificationLevel.ERROR,
}


# A reply worth reading past its status: anything else ({} or a bare acknowledgement) needs no writes.
_REPLY_KEYS = ("notifications", "messages", "parameters")


def reply_has_content(reply: Any) -> bool:
    """Whether a reply carries anything for replies_process to take in."""
    return isinstance(reply, Mapping) and (any(reply.get(key) for key in _REPLY_KEYS) or objects_present(reply))


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
        # The newer generation sends parameters as an object (routing.reply_forms).
        if key == "parameters" and isinstance(value, Mapping):
            continue
        if value not in (None, [], {}, "") and not isinstance(value, list):
            # Read past, it would be lost without a word: say so where the event's notes are shown.
            wanted = "a JSON array or object" if key == "parameters" else "a JSON array"
            note(
                NotificationLevel.WARN,
                f"The reply's '{key}' was not read",
                f"'{key}' must be {wanted} (PROTOCOL §3), not {json_type(value)}.",
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

    parameters = parameters_returned(reply.get("parameters"))
    if parameters and left_out:
        # A `since` moved past objects that made no event would skip them for good.
        note(
            NotificationLevel.ERROR,
            "The reply's parameters were not stored",
            f"{left_out} of the new objects it returned were not made into events; with the parameters as "
            "they were, the next request asks for them again.",
        )
    elif parameters:
        try:
            subscription_parameters_merge(subscription_id=sub.pk, parameters=parameters)
        except ParametersRefused as exc:
            note(NotificationLevel.ERROR, "The reply's parameters were not stored", str(exc))


def subscription_parameters_merge(*, subscription_id: int, parameters: list[Any]) -> list[dict[str, Any]]:
    """Merge returned parameters into the subscription's, under its row lock, by the rule of
    routing.reply_forms.parameters_merged: a merge it refuses (ParametersRefused) stores nothing."""
    # FOR NO KEY UPDATE: a plain FOR UPDATE would also wait for, and block, the deliveries being
    # made to this subscription (their foreign key's share lock), by another reply's events too.
    sub = Subscription.objects.select_for_update(no_key=True).get(pk=subscription_id)
    result = parameters_merged(list(sub.parameters or []), parameters)
    if result != sub.parameters:
        Subscription.objects.filter(pk=subscription_id).update(parameters=result)
    return result
