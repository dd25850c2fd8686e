"""Sending one delivery: claim it, make one HTTP exchange, record the attempt, decide what comes
next, take in what the endpoint replied (PROTOCOL §3), and keep the event's status in step."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from events.errors import HubError
from events.models import Event, EventStatus
from events.services import envelope_validate
from integrator import metrics
from routing import retry, transport
from routing.models import (
    DELIVERY_OPEN_STATES,
    DELIVERY_ORDER_HOLDING_STATES,
    Attempt,
    Delivery,
    DeliveryState,
    Notification,
    NotificationLevel,
    Subscription,
)

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


def delivery_attempt(*, delivery_id: int) -> str | None:
    """Try one delivery once, if it is due and nobody else holds it. Returns the verdict, or None
    when there was nothing to do (already sent, not due yet, held by another worker, endpoint off)."""
    # One round trip for everything the attempt needs, the order check included.
    delivery = (
        Delivery.objects.select_related("event", "event__store", "subscription", "subscription__store")
        .annotate(held_back=earlier_of_same_resource_open())
        .filter(pk=delivery_id)
        .first()
    )
    if delivery is None:
        return None
    sub = delivery.subscription
    now = timezone.now()
    number = delivery.attempt_count + 1
    lease = timedelta(seconds=sub.timeout_seconds + settings.HUB_DELIVERY_LEASE_MARGIN_SECONDS)
    if not sub.is_enabled:
        return None
    if delivery.state not in DELIVERY_OPEN_STATES or delivery.next_attempt_at > now:
        return None
    if delivery.held_back:
        # An earlier delivery of the same resource is still owed to this endpoint: this one waits,
        # without spending an attempt, until that one ends (deliveries_release wakes it).
        _delivery_park(delivery_id=delivery_id)
        return None
    if not _delivery_claim(delivery=delivery, number=number, now=now, lease=lease):
        return None

    event = delivery.event
    request = transport.request_build(
        url=sub.url,
        message=event.message,
        message_id=event.message_id,
        payload=event.payload,
        parameters=sub.parameters or [],
        webhook_id=str(event.uid),
        signing_secret=sub.signing_secret,
        previous_signing_secret=sub.previous_signing_secret_active(now),
        token=sub.token,
        store_name=_store_name(delivery),
        method_override=sub.http_method,
    )
    started_at = timezone.now()
    result = transport.request_send(
        request,
        timeout=sub.timeout_seconds,
        body_max_chars=settings.HUB_RESPONSE_BODY_MAX_CHARS,
        read_max_bytes=settings.HUB_RESPONSE_READ_MAX_BYTES,
    )
    metrics.attempt_observe(attempt_outcome(result), result.latency_ms / 1000)
    return _attempt_conclude(delivery=delivery, number=number, result=result, started_at=started_at)


def earlier_of_same_resource_open() -> Exists:
    """For a Delivery queryset: an earlier delivery of the same resource to the same endpoint is
    still open, so this one must wait (delivery_held_back, in SQL). A delivery without a resource
    key never matches (NULL equals nothing)."""
    return Exists(
        Delivery.objects.filter(
            subscription_id=OuterRef("subscription_id"),
            resource_key=OuterRef("resource_key"),
            id__lt=OuterRef("id"),
            state__in=DELIVERY_ORDER_HOLDING_STATES,
        )
    )


def delivery_held_back(*, delivery: Delivery) -> bool:
    """True while an earlier delivery of the same resource to the same endpoint is still open:
    deliveries of one order reach an endpoint in the order the hub accepted them. Deliveries
    without a resource key are unordered; a failed or cancelled earlier one no longer holds."""
    if not delivery.resource_key:
        return False
    return Delivery.objects.filter(
        subscription_id=delivery.subscription_id,
        resource_key=delivery.resource_key,
        id__lt=delivery.pk,
        state__in=DELIVERY_ORDER_HOLDING_STATES,
    ).exists()


def subscription_max_in_flight(subscription: Subscription) -> int:
    """How many deliveries may be on the wire to this endpoint at once; 0 for no limit."""
    if subscription.max_in_flight is not None:
        return subscription.max_in_flight
    return settings.HUB_SUBSCRIPTION_MAX_IN_FLIGHT


def _delivery_claim(*, delivery: Delivery, number: int, now: datetime, lease: timedelta) -> bool:
    """Take the delivery for this worker: one conditional UPDATE, so two workers holding the same
    message cannot both send, and within the endpoint's in-flight limit."""
    limit = subscription_max_in_flight(delivery.subscription)
    # Without a limit the claim is a single statement and needs no transaction of its own (a
    # BEGIN and a COMMIT are two more round trips); with one, the count and the claim must hold
    # the endpoint's row together.
    with transaction.atomic() if limit else nullcontext():
        if limit:
            # Claims for one endpoint queue up on its row, so that a limit of N means N, not N plus
            # whatever raced past the count.
            list(Subscription.objects.select_for_update().filter(pk=delivery.subscription_id).values_list("pk"))
            busy = Delivery.objects.filter(
                subscription_id=delivery.subscription_id, state=DeliveryState.DELIVERING, lease_expires_at__gt=now
            ).count()
            if busy >= limit:
                _delivery_park(delivery_id=delivery.pk)
                return False
        # The WHERE names only this row's own columns: a join would make Django compare inside a
        # subquery, which PostgreSQL does not re-check against a row a concurrent claim just changed.
        claimed = Delivery.objects.filter(
            pk=delivery.pk,
            state__in=DELIVERY_OPEN_STATES,
            next_attempt_at__lte=now,
            attempt_count=delivery.attempt_count,
        ).update(state=DeliveryState.DELIVERING, attempt_count=number, lease_expires_at=now + lease, enqueued_at=None)
        # The first attempt of any delivery moves a queued event to delivering. The event was read
        # with the delivery: once it is past queued (the other deliveries of a fan-out) there is
        # nothing to move, and the statement is skipped.
        if claimed and delivery.event.status == EventStatus.QUEUED:
            event_status_touch(event_id=delivery.event_id)
    return bool(claimed)


def _delivery_park(*, delivery_id: int) -> None:
    """A delivery that must wait for its turn is no longer 'in the broker': whoever frees the turn
    (deliveries_release) or the sweeper enqueues it again."""
    Delivery.objects.filter(pk=delivery_id, state__in=DELIVERY_OPEN_STATES).update(enqueued_at=None)


def attempt_outcome(result: transport.ExchangeResult) -> str:
    """A small, fixed vocabulary for the metrics label: what kind of thing happened on the wire."""
    if result.succeeded:
        return "success"
    if result.status_code is None:
        return "timeout" if "timed out" in result.error.lower() else "connection_error"
    if 200 <= result.status_code < 300:
        return "invalid_reply"
    return "http_error"


def _store_name(delivery: Delivery) -> str:
    """X-Hub-Store names the store the endpoint is configured for, else the store that pushed the event."""
    if delivery.subscription.store is not None:
        return delivery.subscription.store.name
    if delivery.event.store is not None:
        return delivery.event.store.name
    return ""


def _attempt_conclude(
    *, delivery: Delivery, number: int, result: transport.ExchangeResult, started_at: datetime
) -> str | None:
    sub = delivery.subscription
    now = timezone.now()
    is_test = delivery.event.origin.startswith("test:")
    decision = retry.decide(
        succeeded=result.succeeded,
        status_code=result.status_code,
        attempt_number=number,
        schedule=sub.retry_schedule if sub.retry_schedule is not None else settings.HUB_RETRY_SCHEDULE,
        retries_enabled=sub.retry_enabled and not is_test,
        retry_after=retry.retry_after_seconds(result.retry_after, now=now),
        retry_after_max=settings.HUB_RETRY_AFTER_MAX_SECONDS,
        jitter=settings.HUB_RETRY_JITTER,
    )
    changes: dict[str, Any] = {
        "lease_expires_at": None,
        "last_status_code": result.status_code,
        "last_error": result.error,
    }
    if decision.verdict == retry.Verdict.DELIVERED:
        changes.update(state=DeliveryState.DELIVERED, delivered_at=now)
    elif decision.verdict == retry.Verdict.RETRY:
        changes.update(state=DeliveryState.RETRYING, next_attempt_at=now + timedelta(seconds=decision.delay_seconds))
    else:
        changes.update(state=DeliveryState.FAILED)

    with transaction.atomic():
        # The attempt row shares the outcome's transaction (one commit, not two). It is written
        # whatever the fence below decides; should this transaction fail altogether, the lease
        # runs out and the sweeper records the attempt as unanswered, so no attempt goes unrecorded.
        Attempt.objects.create(
            delivery_id=delivery.pk,
            number=number,
            started_at=started_at,
            request_method=result.method,
            request_url=result.url[:500],
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            response_headers=dict(result.response_headers),
            response_body=result.response_body,
            error=result.error,
            succeeded=result.succeeded,
        )
        # Fenced on the attempt number: if our lease ran out and the sweeper handed the delivery to
        # someone else, their outcome stands and ours is only the attempt row (committed all the same).
        owned = Delivery.objects.filter(pk=delivery.pk, state=DeliveryState.DELIVERING, attempt_count=number).update(
            **changes
        )
        if not owned:
            logger.warning("delivery changed hands during the attempt", extra={"delivery_id": delivery.pk})
            return None
        if decision.verdict == retry.Verdict.DELIVERED:
            if sub.failing_since is not None:
                # Read with the delivery: an endpoint that was not failing then has nothing to clear
                # (one that started failing since keeps its mark until its next success).
                Subscription.objects.filter(pk=sub.pk, failing_since__isnull=False).update(failing_since=None)
            if isinstance(result.reply, Mapping):
                reply_process(delivery=delivery, reply=result.reply)
        elif decision.verdict == retry.Verdict.GONE:
            subscription_disable(
                subscription_id=sub.pk, reason="the endpoint answered 410 Gone", event=delivery.event, delivery=delivery
            )
        else:
            _subscription_failing(subscription=sub, now=now, delivery=delivery)
        if decision.verdict != retry.Verdict.RETRY:
            # A retry moves the delivery from delivering to retrying, which event_status_derive
            # counts alike (open, started): only an ending can change the event's status.
            event_status_refresh(event_id=delivery.event_id)
        from routing.services import deliveries_enqueue, deliveries_release

        if (
            decision.verdict == retry.Verdict.RETRY
            and decision.delay_seconds <= settings.HUB_RETRY_COUNTDOWN_MAX_SECONDS
        ):
            delay = decision.delay_seconds
            transaction.on_commit(lambda: deliveries_enqueue([delivery.pk], countdown=delay))
        # This attempt freed a slot of the endpoint and, if it ended, the turn of the next delivery
        # of the same resource.
        limited = bool(subscription_max_in_flight(sub))
        # A delivery that will be retried still holds its resource's turn: nothing to hand on.
        turn_key = delivery.resource_key if decision.verdict != retry.Verdict.RETRY else None
        if turn_key or limited:
            transaction.on_commit(
                lambda: deliveries_release(subscription_id=sub.pk, resource_key=turn_key, limited=limited)
            )
    metrics.delivery_outcome_count(str(decision.verdict))
    logger.info(
        "delivery attempt",
        extra={
            "delivery_id": delivery.pk,
            "attempt": number,
            "status_code": result.status_code,
            "verdict": decision.verdict,
        },
    )
    return str(decision.verdict)


def _subscription_failing(*, subscription: Subscription, now: Any, delivery: Delivery) -> None:
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


def reply_process(*, delivery: Delivery, reply: Mapping[str, Any]) -> None:
    """PROTOCOL §3: store notifications, route returned messages onward, keep returned parameters."""
    event = delivery.event
    sub = delivery.subscription

    def note(level: str, subject: str, description: str = "") -> None:
        Notification.objects.create(
            event=event,
            delivery=delivery,
            subscription=sub,
            level=level,
            subject=subject[:200],
            description=description,
            resource_key=event.resource_key,
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
        from routing.services import event_accept

        if event.depth + 1 > settings.HUB_MAX_EVENT_DEPTH:
            note(
                NotificationLevel.WARN,
                f"{len(messages)} returned message(s) not routed",
                f"Events returned in reply may nest {settings.HUB_MAX_EVENT_DEPTH} deep; this one is at "
                f"depth {event.depth}.",
            )
        else:
            for index, item in enumerate(messages[:REPLY_MAX_MESSAGES]):
                try:
                    envelope = envelope_validate(item)
                except HubError as exc:
                    note(NotificationLevel.WARN, f"Returned message {index + 1} ignored", exc.detail)
                    continue
                event_accept(store=None, envelope=envelope, parent=event, origin=f"subscription:{sub.pk}")
            if len(messages) > REPLY_MAX_MESSAGES:
                note(NotificationLevel.WARN, f"{len(messages) - REPLY_MAX_MESSAGES} returned messages dropped")

    parameters = reply.get("parameters")
    if isinstance(parameters, list) and parameters:
        subscription_parameters_merge(subscription_id=sub.pk, parameters=parameters)


def subscription_parameters_merge(*, subscription_id: int, parameters: list[Any]) -> list[dict[str, Any]]:
    """Returned parameters replace those of the same name and add new ones; the rest stay."""
    sub = Subscription.objects.select_for_update().get(pk=subscription_id)
    merged: dict[str, Any] = {}
    for item in list(sub.parameters or []) + parameters:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"]:
            merged[item["name"]] = item.get("value")
    result = [{"name": name, "value": value} for name, value in merged.items()]
    if result != sub.parameters:
        Subscription.objects.filter(pk=subscription_id).update(parameters=result)
    return result


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
    # No savepoint inside a caller's transaction (two round trips fewer): nothing here is caught
    # and retried, so a failure rolls back the caller's transaction as a whole anyway.
    with transaction.atomic(savepoint=False):
        current = Event.objects.select_for_update().filter(pk=event_id).values_list("status", flat=True).first()
        if current is None:
            return ""
        rows = list(
            Delivery.objects.filter(event_id=event_id).values_list("subscription_id", "id", "state", "attempt_count")
        )
        status = event_status_derive(rows)
        if status != current:
            Event.objects.filter(pk=event_id).update(status=status)
    return status


def event_status_touch(*, event_id: int) -> None:
    """The first attempt of any delivery moves a queued event to delivering."""
    Event.objects.filter(pk=event_id, status=EventStatus.QUEUED).update(status=EventStatus.DELIVERING)
