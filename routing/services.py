"""Routing services: who gets an event, accepting an event with its deliveries, and the
bookkeeping around deliveries (sweeping, retrying now, cancelling, replaying, test sends).

Sending lives in routing.pump and waking the workers in routing.dispatch; what callers need of
them is re-exported here so they have one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from events.models import Event, EventStatus, Store
from events.services import (
    Envelope,
    IngestResult,
    event_build,
    event_ingest,
    event_insert,
    event_unsaved,
    events_insert,
)
from routing import matching
from routing.attempts import event_status_refresh
from routing.departures import departures_notes
from routing.dispatch import pumps_enqueue
from routing.fields import encrypted_fields
from routing.models import (
    DELIVERY_OPEN_STATES,
    Attempt,
    Delivery,
    DeliveryState,
    Notification,
    Subscription,
    signing_secret_new,
)
from routing.pump import deliveries_pump, delivery_attempt, delivery_subscription_id
from routing.rows import placeholders
from routing.selectors import subscriptions_cache_clear, subscriptions_enabled, subscriptions_enabled_for_routing

__all__ = [
    "TEST_MESSAGE",
    "SweepResult",
    "deliveries_create_for_event",
    "deliveries_pump",
    "deliveries_sweep",
    "delivery_attempt",
    "delivery_cancel",
    "delivery_subscription_id",
    "delivery_replay",
    "delivery_retry_now",
    "event_accept",
    "events_accept",
    "event_status_refresh",
    "pumps_enqueue",
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
    deliveries = [Delivery.routed(event=event, subscription=sub) for sub in subscriptions_for_event(event=event)]
    if deliveries:
        Delivery.objects.bulk_create(deliveries)
    else:
        Event.objects.filter(pk=event.pk).update(status=EventStatus.UNROUTED)
        event.status = EventStatus.UNROUTED
    return deliveries


def event_accept(
    *, store: Store | None, envelope: Envelope, parent: Event | None = None, origin: str = ""
) -> IngestResult:
    """Store an event and its deliveries in one transaction, and enqueue them once committed."""
    event = event_build(store=store, envelope=envelope, parent=parent, origin=origin)
    if store is not None and not transaction.get_connection().in_atomic_block:
        # A push on its own (no caller's transaction): the insert needs no savepoint (two round
        # trips), because a repeated message_id can roll the whole transaction back and be
        # looked up after it. Nothing was stored or enqueued by the rolled-back attempt.
        for last_try in (False, True):
            try:
                return events_accept_built(store=store, events=[event], savepoint=False)[0]
            except IntegrityError:
                existing = Event.objects.filter(store=store, message_id=event.message_id).first()
                if existing is not None:
                    return IngestResult(existing, created=False)
                if last_try:
                    raise
                # Not a repeat: a subscription this process routes by was deleted (by another
                # process: the list is remembered for HUB_SUBSCRIPTIONS_CACHE_SECONDS), and its
                # delivery failed the statement. Route again by the list as it is now.
                subscriptions_cache_clear()
                event_unsaved(event)
    return events_accept_built(store=store, events=[event])[0]


def events_accept(*, store: Store, envelopes: list[Envelope]) -> list[IngestResult]:
    """Accept a store's batch as event_accept would each envelope, in order, but with one read of
    the subscriptions, one INSERT for the events, one for the deliveries and one enqueue."""
    return events_accept_built(store=store, events=[event_build(store=store, envelope=e) for e in envelopes])


def events_accept_built(*, store: Store | None, events: list[Event], savepoint: bool = True) -> list[IngestResult]:
    """Route built events before they are stored (an event nobody wants is stored as unrouted,
    not updated to it afterwards), store them and their deliveries all or nothing, and enqueue
    the deliveries once committed. Deliveries are created in the events' order, so their ids keep
    each resource's order.

    One event is one INSERT statement with its deliveries and needs no transaction of its own: the
    statement is atomic, and in autocommit it is committed (synchronously) before it returns, so
    a push answered 202 is as durable as with BEGIN/COMMIT, with two round trips fewer (three
    when it is routed: the deliveries' INSERT is the same statement). A batch inside
    its caller's transaction (POST /events/batch) needs no savepoint either: the caller's
    transaction already makes it all or nothing."""
    # A store's push (the web's hot path) routes by the list each process remembers for a moment;
    # a message an endpoint returned (store None, accepted by a worker, seldom) reads it fresh.
    subscriptions = subscriptions_enabled_for_routing() if store is not None else subscriptions_enabled()
    wanted = _route(events, subscriptions)
    if len(events) == 1:
        # The event and its deliveries are one atomic write (events.services.event_row_insert: on
        # PostgreSQL one statement). A push on its own (no caller's transaction, savepoint False)
        # thus opens no transaction: the statement is committed when it returns, and on_commit
        # wakes the workers at once; inside a caller's transaction they are woken at its commit.
        deliveries = [Delivery.routed(event=events[0], subscription=sub) for sub in wanted[0]]
        notes = departures_notes(events)
        result = event_insert(events[0], savepoint=savepoint, dependents=[*deliveries, *notes])
        if deliveries and result.created:
            # One message per endpoint, not per delivery: the worker that takes it sends all of
            # that endpoint's due deliveries (routing.pump).
            transaction.on_commit(lambda: pumps_enqueue([d.subscription_id for d in deliveries], coalesce=True))
        return [result]
    # Checked before the transaction: the rows' locks are not held while the payloads are walked.
    notes = departures_notes(events)
    with transaction.atomic():
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
            Delivery.objects.bulk_create(deliveries)
            endpoints = [d.subscription_id for d in deliveries]
            transaction.on_commit(lambda: pumps_enqueue(endpoints, coalesce=True))
        stored = {id(result.event) for result in results if result.created}
        Notification.objects.bulk_create([note for note in notes if id(note.event) in stored])
    return results


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
    lock = " FOR KEY SHARE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {Subscription._meta.db_table} WHERE id IN ({placeholders(len(wanted))}){lock}",
            sorted(wanted),
        )
        return {row[0] for row in cursor.fetchall()} == wanted


@dataclass(frozen=True)
class SweepResult:
    reclaimed: int
    enqueued: int


def deliveries_sweep() -> SweepResult:
    """Make the database, not the broker, the memory of what is owed.

    Deliveries whose worker vanished (lease expired) become retryable again, with their attempt
    recorded as unanswered, and every enabled endpoint with a delivery due for longer than
    HUB_SWEEP_LOST_AFTER_SECONDS gets a message: one whose message was lost, or that waited in the
    database (a retry hours away, a broker outage), is sent. A message too many only costs a look."""
    now = timezone.now()
    reclaimed = 0
    # Endpoints of reclaimed deliveries, due again at once and with no message on the way.
    woken: list[int] = []
    expired = Delivery.objects.filter(state=DeliveryState.DELIVERING, lease_expires_at__lt=now)
    error = "the worker sending this attempt stopped before recording an answer (lease expired)"
    rows = expired.values_list("id", "attempt_count", "subscription_id", "subscription__url")
    for delivery_id, number, subscription_id, url in rows[: settings.HUB_SWEEP_BATCH_SIZE]:
        with transaction.atomic():
            taken = Delivery.objects.filter(
                pk=delivery_id, state=DeliveryState.DELIVERING, attempt_count=number, lease_expires_at__lt=now
            ).update(
                state=DeliveryState.RETRYING,
                next_attempt_at=now,
                lease_expires_at=None,
                claim=None,
                last_error=error,
                last_status_code=None,
                updated_at=now,
            )
            if not taken:
                continue
            reclaimed += 1
            woken.append(subscription_id)
            if not Attempt.objects.filter(delivery_id=delivery_id, number=number).exists():
                Attempt.objects.create(
                    delivery_id=delivery_id, number=number, request_method="", request_url=url, error=error
                )
        logger.warning("reclaimed a delivery whose lease expired", extra={"delivery_id": delivery_id})

    published = pumps_enqueue([*woken, *endpoints_lost(now=now)])
    if reclaimed or published:
        logger.info("sweep", extra={"reclaimed": reclaimed, "enqueued": len(published)})
    return SweepResult(reclaimed=reclaimed, enqueued=len(published))


def endpoints_lost(*, now: datetime) -> list[int]:
    """Enabled endpoints with a delivery due for longer than HUB_SWEEP_LOST_AFTER_SECONDS. One that
    fell due just now has its message on the way (the push's, or a retry's countdown); one due for
    longer has lost it, or never had one."""
    lost_before = now - timedelta(seconds=settings.HUB_SWEEP_LOST_AFTER_SECONDS)
    due = Delivery.objects.filter(
        subscription_id=OuterRef("pk"), state__in=DELIVERY_OPEN_STATES, next_attempt_at__lte=lost_before
    )
    return list(
        Subscription.objects.filter(is_enabled=True).filter(Exists(due)).order_by("id").values_list("id", flat=True)
    )


def delivery_retry_now(*, delivery_id: int) -> bool:
    """Make a waiting or failed delivery due now and enqueue it. A failed delivery gets one more
    attempt. False when there is nothing to retry (delivered, cancelled, being sent, endpoint disabled)."""
    now = timezone.now()
    with transaction.atomic():
        if not Subscription.objects.filter(deliveries__pk=delivery_id, is_enabled=True).exists():
            return False
        base = Delivery.objects.filter(pk=delivery_id)
        changed = base.filter(state__in=DELIVERY_OPEN_STATES).update(next_attempt_at=now, updated_at=now)
        changed += base.filter(state=DeliveryState.FAILED).update(
            state=DeliveryState.RETRYING, next_attempt_at=now, updated_at=now
        )
        if not changed:
            return False
        event_id, subscription_id = base.values_list("event_id", "subscription_id").get()
        event_status_refresh(event_id=event_id)
        transaction.on_commit(lambda: pumps_enqueue([subscription_id]))
    return True


def delivery_cancel(*, delivery_id: int) -> bool:
    """Stop a delivery that is waiting or failed; one being sent right now is left to finish."""
    with transaction.atomic():
        changed = Delivery.objects.filter(
            pk=delivery_id, state__in=(*DELIVERY_OPEN_STATES, DeliveryState.FAILED)
        ).update(state=DeliveryState.CANCELLED, lease_expires_at=None, updated_at=timezone.now())
        if not changed:
            return False
        event_id, subscription_id = (
            Delivery.objects.filter(pk=delivery_id).values_list("event_id", "subscription_id").get()
        )
        event_status_refresh(event_id=event_id)
        # A cancelled delivery no longer holds back later ones of its resource: their turn has come.
        transaction.on_commit(lambda: pumps_enqueue([subscription_id]))
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
        transaction.on_commit(lambda: pumps_enqueue([replay.subscription_id]))
    return replay


def subscription_enable(*, subscription_id: int) -> bool:
    """Turn an endpoint back on; the failure streak that disabled it starts over, and the deliveries
    it missed while disabled, still due, are sent. False when it was already on."""
    changed = Subscription.objects.filter(pk=subscription_id, is_enabled=False).update(
        is_enabled=True, disabled_reason="", failing_since=None
    )
    if changed:
        pumps_enqueue([subscription_id])
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
        transaction.on_commit(lambda: pumps_enqueue([subscription.pk]))
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
    """Re-encrypt every stored signing secret, endpoint token and parameter list with the first
    HUB_ENCRYPTION_KEYS key (after putting a new key first); the old key can be removed once this
    has run. Previous secrets whose grace is over are dropped rather than carried over. Returns
    the subscriptions rewritten."""
    now = timezone.now()
    # Every encrypted field, so that none is left under a key about to be dropped.
    fields = [*encrypted_fields(Subscription), "previous_signing_secret_expires_at"]
    count = 0
    for subscription in Subscription.objects.only("pk", *fields).iterator():
        if not subscription.previous_signing_secret_active(now):
            subscription.previous_signing_secret = ""
            subscription.previous_signing_secret_expires_at = None
        # Saving re-encrypts: the field decrypts with any key on read and encrypts with the first.
        subscription.save(update_fields=fields)
        count += 1
    return count
