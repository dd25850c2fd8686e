"""The sweeper (Celery beat): the database, not the broker, is the memory of what is owed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from routing.models import DELIVERY_OPEN_STATES, Attempt, Delivery, DeliveryState, Subscription
from routing.wakeup import pumps_enqueue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    reclaimed: int
    enqueued: int


def deliveries_sweep(*, now: datetime | None = None) -> SweepResult:
    """Take back expired leases and wake endpoints whose message was lost; a message too many costs a look.
    `now`: the time the sweep takes for now (tests: a sweep as it would run later)."""
    now = now or timezone.now()
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
    """Enabled endpoints with a delivery due for longer than HUB_SWEEP_LOST_AFTER_SECONDS (its message lost)."""
    lost_before = now - timedelta(seconds=settings.HUB_SWEEP_LOST_AFTER_SECONDS)
    due = Delivery.objects.filter(
        subscription_id=OuterRef("pk"), state__in=DELIVERY_OPEN_STATES, next_attempt_at__lte=lost_before
    )
    return list(
        Subscription.objects.filter(is_enabled=True).filter(Exists(due)).order_by("id").values_list("id", flat=True)
    )
