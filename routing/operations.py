"""What staff do to deliveries and subscriptions (admin, management API, commands): retry now,
cancel, replay, send a test, enable, rotate and re-encrypt secrets."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from events.services import event_build, event_insert
from events.validation import Envelope
from routing.fields import encrypted_fields
from routing.models import (
    DELIVERY_OPEN_STATES,
    DELIVERY_UNFINISHED_STATES,
    Delivery,
    DeliveryState,
    Subscription,
    signing_secret_new,
)
from routing.outbox import delivery_add
from routing.status import event_status_refresh
from routing.wakeup import pumps_enqueue

logger = logging.getLogger(__name__)

# The message of the ping an admin sends to check an endpoint; it is never routed to anyone else.
TEST_MESSAGE = "hub:test"


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
            Delivery.objects.filter(replay_of_id=root_id, state__in=DELIVERY_UNFINISHED_STATES).order_by("-id").first()
        )
        if pending is not None:
            return pending
        replay = delivery_add(
            event_id=original.event_id,
            subscription_id=original.subscription_id,
            at=timezone.now(),
            resource_key=original.resource_key,
            replay_of_id=root_id,
        )
        event_status_refresh(event_id=original.event_id)
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
                state__in=DELIVERY_UNFINISHED_STATES,
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
        event = event_insert(event_build(store=None, envelope=envelope, origin=origin)).event
        delivery = delivery_add(event_id=event.pk, subscription_id=subscription.pk, at=now)
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
