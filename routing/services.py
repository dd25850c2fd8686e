"""Routing services: who gets an event, accepting an event with its deliveries, and the
bookkeeping around deliveries (sweeping, retrying now, cancelling, replaying, test sends).

Sending one delivery lives in routing.attempts; it is re-exported here so callers have one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, Q, QuerySet
from django.utils import timezone

from events.models import Event, EventStatus, Store
from events.services import Envelope, IngestResult, event_build, event_ingest, event_insert, events_insert
from routing import matching
from routing.attempts import (
    delivery_attempt,
    earlier_of_same_resource_open,
    event_status_refresh,
    subscription_max_in_flight,
)
from routing.models import (
    DELIVERY_OPEN_STATES,
    DELIVERY_ORDER_HOLDING_STATES,
    Attempt,
    Delivery,
    DeliveryState,
    Subscription,
    signing_secret_new,
)
from routing.selectors import subscriptions_enabled, subscriptions_enabled_for_routing

__all__ = [
    "TEST_MESSAGE",
    "SweepResult",
    "deliveries_create_for_event",
    "deliveries_enqueue",
    "deliveries_release",
    "deliveries_sweep",
    "delivery_attempt",
    "delivery_cancel",
    "delivery_replay",
    "delivery_retry_now",
    "event_accept",
    "events_accept",
    "event_status_refresh",
    "subscription_enable",
    "subscription_secret_rotate",
    "subscription_secrets_reencrypt",
    "subscription_send_test",
    "subscriptions_for_event",
]

logger = logging.getLogger(__name__)

# The message of the ping an admin sends to check an endpoint; it is never routed to anyone else.
TEST_MESSAGE = "hub:test"


def subscriptions_for_event(*, event: Event, subscriptions: list[Subscription] | None = None) -> list[Subscription]:
    """The enabled subscriptions that want this event; `subscriptions` (subscriptions_enabled())
    saves reading them again for each event of a batch."""
    subs = subscriptions_enabled() if subscriptions is None else subscriptions
    wanted = []
    for sub in subs:
        if sub.store_id is not None and sub.store_id == event.store_id and not sub.receive_own_events:
            continue
        # Nor is an event an endpoint returned (§3 messages) sent back to that endpoint: it would
        # answer it again, and again, down to the depth limit.
        if event.origin == f"subscription:{sub.pk}" and not sub.receive_own_events:
            continue
        if not matching.message_types_match(sub.message_types, event.message):
            continue
        if not matching.filters_match(sub.filters, event.payload, sub.filter_mode):
            continue
        wanted.append(sub)
    return wanted


def deliveries_create_for_event(*, event: Event) -> list[Delivery]:
    """One pending delivery per matching subscription; the event becomes unrouted when none match."""
    deliveries = [
        Delivery(event=event, subscription=sub, resource_key=event.resource_key, next_attempt_at=event.created_at)
        for sub in subscriptions_for_event(event=event)
    ]
    if deliveries:
        Delivery.objects.bulk_create(deliveries)
    else:
        Event.objects.filter(pk=event.pk).update(status=EventStatus.UNROUTED)
        event.status = EventStatus.UNROUTED
    return deliveries


# Until when (time.monotonic) this process leaves publishing to the sweeper after a broker failure.
_broker_down_until = [0.0]


def deliveries_enqueue(delivery_ids: Iterable[int], *, countdown: float | None = None) -> list[int]:
    """Tell the broker 'look at delivery N' and note when; returns the ids actually published.

    A broker outage is not the store's problem: the deliveries are durable and the sweeper
    enqueues them once the broker is back."""
    from routing.tasks import delivery_attempt_task

    ids = list(delivery_ids)
    if not ids:
        return []
    if time.monotonic() < _broker_down_until[0]:
        # The broker failed moments ago: trying again would make every push wait out the broker
        # client's connection attempts. The deliveries stay unmarked, for the sweeper.
        return []
    # Noted before publishing: a worker that takes the message at once and finds the delivery must
    # wait its turn clears the mark (routing.attempts._delivery_park), and must not find it set after.
    marked_at = timezone.now()
    Delivery.objects.filter(pk__in=ids, state__in=DELIVERY_OPEN_STATES).update(enqueued_at=marked_at)
    published: list[int] = []
    for delivery_id in ids:
        try:
            if countdown:
                delivery_attempt_task.apply_async(args=[delivery_id], countdown=countdown)
            else:
                delivery_attempt_task.delay(delivery_id)
        except Exception:  # noqa: BLE001 - any broker failure; the database still holds the delivery
            logger.warning("broker unavailable; delivery left for the sweeper", extra={"delivery_id": delivery_id})
            _broker_down_until[0] = time.monotonic() + settings.HUB_BROKER_BACKOFF_SECONDS
            break
        published.append(delivery_id)
    unpublished = ids[len(published) :]
    if unpublished:
        Delivery.objects.filter(pk__in=unpublished, enqueued_at=marked_at).update(enqueued_at=None)
    return published


def _earlier_of_same_resource_open() -> Exists:
    """For a Delivery queryset: an earlier delivery of the same resource to the same endpoint is
    still open, so this one must wait (routing.attempts.delivery_held_back, in SQL)."""
    return earlier_of_same_resource_open()


def deliveries_release(*, subscription_id: int, resource_key: str | None, limited: bool = True) -> list[int]:
    """After an attempt or a cancel: enqueue the delivery whose turn has come (the next one of the
    same resource) and, for an endpoint with an in-flight limit, the oldest one waiting for a
    slot. Enqueuing one that must still wait is harmless; the sweeper covers anything missed."""
    now = timezone.now()
    wake: list[int] = []
    if resource_key:
        head = (
            Delivery.objects.filter(
                subscription_id=subscription_id, resource_key=resource_key, state__in=DELIVERY_ORDER_HOLDING_STATES
            )
            .order_by("id")
            .values_list("id", "state", "next_attempt_at")
            .first()
        )
        if head is not None and head[1] in DELIVERY_OPEN_STATES and head[2] <= now:
            wake.append(head[0])
    if not limited:
        # Without an in-flight limit nothing waits for a slot.
        return deliveries_enqueue(wake) if wake else []
    waiting = (
        Delivery.objects.filter(
            subscription_id=subscription_id,
            state__in=DELIVERY_OPEN_STATES,
            next_attempt_at__lte=now,
            enqueued_at__isnull=True,
            subscription__is_enabled=True,
        )
        .exclude(pk__in=wake)
        .filter(~_earlier_of_same_resource_open())
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)
        .first()
    )
    if waiting is not None:
        wake.append(waiting)
    return deliveries_enqueue(wake) if wake else []


def event_accept(
    *, store: Store | None, envelope: Envelope, parent: Event | None = None, origin: str = ""
) -> IngestResult:
    """Store an event and its deliveries in one transaction, and enqueue them once committed."""
    event = event_build(store=store, envelope=envelope, parent=parent, origin=origin)
    if store is not None and not transaction.get_connection().in_atomic_block:
        # A push on its own (no caller's transaction): the insert needs no savepoint (two round
        # trips), because a repeated message_id can roll the whole transaction back and be
        # looked up after it. Nothing was stored or enqueued by the rolled-back attempt.
        try:
            return events_accept_built(store=store, events=[event], savepoint=False)[0]
        except IntegrityError:
            existing = Event.objects.filter(store=store, message_id=event.message_id).first()
            if existing is None:
                raise
            return IngestResult(existing, created=False)
    return events_accept_built(store=store, events=[event])[0]


def events_accept(*, store: Store, envelopes: list[Envelope]) -> list[IngestResult]:
    """Accept a store's batch as event_accept would each envelope, in order, but with one read of
    the subscriptions, one INSERT for the events, one for the deliveries and one enqueue."""
    return events_accept_built(store=store, events=[event_build(store=store, envelope=e) for e in envelopes])


def events_accept_built(*, store: Store | None, events: list[Event], savepoint: bool = True) -> list[IngestResult]:
    """Route built events before they are stored (an event nobody wants is stored as unrouted,
    not updated to it afterwards), store them and their deliveries in one transaction, and
    enqueue the deliveries once committed. Deliveries are created in the events' order, so their
    ids keep each resource's order.

    One event that no subscription wants is one INSERT and needs no transaction of its own: the
    statement is atomic, and in autocommit it is committed (synchronously) before it returns, so
    a push answered 202 is as durable as with BEGIN/COMMIT, two round trips fewer. A batch inside
    its caller's transaction (POST /events/batch) needs no savepoint either: the caller's
    transaction already makes it all or nothing."""
    # A store's push (the web's hot path) routes by the list each process remembers for a moment;
    # a message an endpoint returned (store None, accepted by a worker, seldom) reads it fresh.
    subscriptions = subscriptions_enabled_for_routing() if store is not None else subscriptions_enabled()
    wanted = [subscriptions_for_event(event=event, subscriptions=subscriptions) for event in events]
    for event, subs in zip(events, wanted, strict=True):
        if not subs:
            event.status = EventStatus.UNROUTED
    if len(events) == 1 and not wanted[0]:
        return [event_insert(events[0], savepoint=savepoint)]
    with transaction.atomic(savepoint=len(events) == 1):
        if store is not None and len(events) > 1:
            results = events_insert(store=store, events=events)
        else:
            results = [event_insert(event, savepoint=savepoint) for event in events]
        deliveries = [
            Delivery(
                event=result.event,
                subscription=sub,
                resource_key=result.event.resource_key,
                next_attempt_at=result.event.created_at,
            )
            for result, subs in zip(results, wanted, strict=True)
            if result.created
            for sub in subs
        ]
        if deliveries:
            Delivery.objects.bulk_create(deliveries)
            ids = [d.pk for d in deliveries]
            transaction.on_commit(lambda: deliveries_enqueue(ids))
    return results


@dataclass(frozen=True)
class SweepResult:
    reclaimed: int
    enqueued: int


def deliveries_sweep() -> SweepResult:
    """Make the database, not the broker, the memory of what is owed.

    Deliveries whose worker vanished (lease expired) become retryable again, and due deliveries
    that were never enqueued, or enqueued long enough ago that the message must be lost, are
    enqueued again. Sending twice is harmless: a delivery is claimed before it is sent."""
    now = timezone.now()
    reclaimed = 0
    expired = Delivery.objects.filter(state=DeliveryState.DELIVERING, lease_expires_at__lt=now)
    for delivery_id, number in expired.values_list("id", "attempt_count")[: settings.HUB_SWEEP_BATCH_SIZE]:
        with transaction.atomic():
            taken = Delivery.objects.filter(
                pk=delivery_id, state=DeliveryState.DELIVERING, attempt_count=number, lease_expires_at__lt=now
            ).update(state=DeliveryState.RETRYING, next_attempt_at=now, lease_expires_at=None, enqueued_at=None)
            if not taken:
                continue
            reclaimed += 1
            error = "the worker sending this attempt stopped before recording an answer (lease expired)"
            if not Attempt.objects.filter(delivery_id=delivery_id, number=number).exists():
                delivery = Delivery.objects.select_related("subscription").get(pk=delivery_id)
                Attempt.objects.create(
                    delivery_id=delivery_id,
                    number=number,
                    request_method="",
                    request_url=delivery.subscription.url,
                    error=error,
                )
            Delivery.objects.filter(pk=delivery_id).update(last_error=error, last_status_code=None)
        logger.warning("reclaimed a delivery whose lease expired", extra={"delivery_id": delivery_id})

    lost_before = now - timedelta(seconds=settings.HUB_SWEEP_LOST_AFTER_SECONDS)
    # Deliveries waiting for an earlier one of the same resource are left out: that one's end
    # enqueues them (deliveries_release), and enqueuing them now would only bounce.
    due = (
        Delivery.objects.filter(state__in=DELIVERY_OPEN_STATES, next_attempt_at__lte=now, subscription__is_enabled=True)
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=lost_before))
        .filter(~_earlier_of_same_resource_open())
    )
    published = deliveries_enqueue(_due_within_limits(due, now=now))
    if reclaimed or published:
        logger.info("sweep", extra={"reclaimed": reclaimed, "enqueued": len(published)})
    return SweepResult(reclaimed=reclaimed, enqueued=len(published))


def _due_within_limits(due: QuerySet[Delivery], *, now: datetime) -> list[int]:
    """The due deliveries to enqueue, endpoint by endpoint: an endpoint with an in-flight limit gets
    only as many as it has free slots, so that one dead endpoint's backlog neither bounces off its
    limit at every sweep nor fills the batch ahead of every other endpoint's deliveries."""
    batch = settings.HUB_SWEEP_BATCH_SIZE
    subscription_ids = list(due.order_by().values_list("subscription_id", flat=True).distinct())
    if not subscription_ids:
        return []
    limits = {
        sub.pk: subscription_max_in_flight(sub)
        for sub in Subscription.objects.filter(pk__in=subscription_ids).only("id", "max_in_flight")
    }
    busy = dict(
        Delivery.objects.filter(
            subscription_id__in=[pk for pk, limit in limits.items() if limit],
            state=DeliveryState.DELIVERING,
            lease_expires_at__gt=now,
        )
        .values_list("subscription_id")
        .annotate(n=Count("id"))
        .values_list("subscription_id", "n")
    )
    picked: list[tuple[datetime, int]] = []
    for subscription_id in subscription_ids:
        limit = limits.get(subscription_id, 0)
        room = max(limit - busy.get(subscription_id, 0), 0) if limit else batch
        if room:
            rows = due.filter(subscription_id=subscription_id).order_by("next_attempt_at", "id")
            picked += [(at, pk) for pk, at in rows.values_list("id", "next_attempt_at")[: min(room, batch)]]
    return [pk for _, pk in sorted(picked)[:batch]]


def delivery_retry_now(*, delivery_id: int) -> bool:
    """Make a waiting or failed delivery due now and enqueue it. A failed delivery gets one more
    attempt. False when there is nothing to retry (delivered, cancelled, being sent, endpoint disabled)."""
    now = timezone.now()
    with transaction.atomic():
        if not Subscription.objects.filter(deliveries__pk=delivery_id, is_enabled=True).exists():
            return False
        base = Delivery.objects.filter(pk=delivery_id)
        changed = base.filter(state__in=DELIVERY_OPEN_STATES).update(next_attempt_at=now, enqueued_at=None)
        changed += base.filter(state=DeliveryState.FAILED).update(
            state=DeliveryState.RETRYING, next_attempt_at=now, enqueued_at=None
        )
        if not changed:
            return False
        event_id = Delivery.objects.filter(pk=delivery_id).values_list("event_id", flat=True).get()
        event_status_refresh(event_id=event_id)
        transaction.on_commit(lambda: deliveries_enqueue([delivery_id]))
    return True


def delivery_cancel(*, delivery_id: int) -> bool:
    """Stop a delivery that is waiting or failed; one being sent right now is left to finish."""
    with transaction.atomic():
        changed = Delivery.objects.filter(
            pk=delivery_id, state__in=(*DELIVERY_OPEN_STATES, DeliveryState.FAILED)
        ).update(state=DeliveryState.CANCELLED, lease_expires_at=None)
        if not changed:
            return False
        event_id, subscription_id, resource_key = (
            Delivery.objects.filter(pk=delivery_id).values_list("event_id", "subscription_id", "resource_key").get()
        )
        event_status_refresh(event_id=event_id)
        # A cancelled delivery no longer holds back later ones of its resource.
        transaction.on_commit(lambda: deliveries_release(subscription_id=subscription_id, resource_key=resource_key))
    return True


def delivery_replay(*, delivery_id: int) -> Delivery:
    """A new delivery of the same event to the same subscription. Asking again while that replay
    is still on its way returns it instead of sending a third copy."""
    with transaction.atomic():
        original = Delivery.objects.select_for_update().get(pk=delivery_id)
        root_id = original.replay_of_id or original.pk
        if root_id != original.pk:
            Delivery.objects.select_for_update().filter(pk=root_id).first()
        pending = (
            Delivery.objects.filter(replay_of_id=root_id, state__in=(*DELIVERY_OPEN_STATES, DeliveryState.DELIVERING))
            .order_by("-id")
            .first()
        )
        if pending is not None:
            return pending
        replay = Delivery.objects.create(
            event_id=original.event_id,
            subscription_id=original.subscription_id,
            resource_key=original.resource_key,
            replay_of_id=root_id,
        )
        event_status_refresh(event_id=original.event_id)
        transaction.on_commit(lambda: deliveries_enqueue([replay.pk]))
    return replay


def subscription_enable(*, subscription_id: int) -> bool:
    """Turn an endpoint back on; the failure streak that disabled it starts over. Deliveries it
    missed while disabled are still due, and the sweeper sends them. False when it was already on."""
    changed = Subscription.objects.filter(pk=subscription_id, is_enabled=False).update(
        is_enabled=True, disabled_reason="", failing_since=None
    )
    return bool(changed)


def subscription_send_test(*, subscription_id: int) -> Delivery:
    """Send a `hub:test` event to one subscription only (one attempt, no retries). While a test is
    still on its way, asking again returns it."""
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().get(pk=subscription_id)
        origin = f"test:subscription:{subscription.pk}"
        pending = (
            Delivery.objects.filter(
                subscription=subscription,
                event__origin=origin,
                state__in=(*DELIVERY_OPEN_STATES, DeliveryState.DELIVERING),
            )
            .order_by("-id")
            .first()
        )
        if pending is not None:
            return pending
        now = timezone.now()
        envelope = Envelope(
            message=TEST_MESSAGE,
            message_id=None,
            payload={"test": {"subscription": subscription.name, "sent_at": now.isoformat()}},
        )
        event = event_ingest(store=None, envelope=envelope, origin=origin).event
        delivery = Delivery.objects.create(event=event, subscription=subscription, next_attempt_at=now)
        transaction.on_commit(lambda: deliveries_enqueue([delivery.pk]))
    return delivery


def subscription_secret_rotate(*, subscription_id: int) -> str:
    """Give a subscription a new whsec_ signing secret and return it (shown once, to the admin).

    The replaced secret stays (encrypted) for HUB_SECRET_ROTATION_GRACE_SECONDS, and until then
    every delivery carries a signature under each secret (Standard Webhooks allows several), so the
    endpoint can switch over at its own pace. Only one previous secret is kept: rotating again
    during a grace ends the older one. A grace of 0 drops the old secret at once.
    """
    grace = max(settings.HUB_SECRET_ROTATION_GRACE_SECONDS, 0)
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update().get(pk=subscription_id)
        new_secret = signing_secret_new()
        if grace:
            subscription.previous_signing_secret = subscription.signing_secret
            subscription.previous_signing_secret_expires_at = timezone.now() + timedelta(seconds=grace)
        else:
            subscription.previous_signing_secret = ""
            subscription.previous_signing_secret_expires_at = None
        subscription.signing_secret = new_secret
        subscription.save(
            update_fields=[
                "signing_secret",
                "previous_signing_secret",
                "previous_signing_secret_expires_at",
                "updated_at",
            ]
        )
    logger.info("subscription signing secret rotated", extra={"subscription_id": subscription_id})
    return new_secret


def subscription_secrets_reencrypt() -> int:
    """Re-encrypt every stored signing secret and endpoint token with the first HUB_ENCRYPTION_KEYS
    key (after putting a new key first); the old key can be removed once this has run. Previous
    secrets whose grace is over are dropped rather than carried over. Returns the subscriptions
    rewritten."""
    now = timezone.now()
    fields = ["signing_secret", "previous_signing_secret", "previous_signing_secret_expires_at", "token"]
    count = 0
    for subscription in Subscription.objects.only("pk", *fields).iterator():
        if not subscription.previous_signing_secret_active(now):
            subscription.previous_signing_secret = ""
            subscription.previous_signing_secret_expires_at = None
        # Saving re-encrypts: the field decrypts with any key on read and encrypts with the first.
        subscription.save(update_fields=fields)
        count += 1
    return count
