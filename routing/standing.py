"""An endpoint's standing: how many deliveries it may have on the wire, and when its failures turn it off."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings

from events.models import Event
from routing.models import Delivery, Notification, NotificationLevel, Subscription

logger = logging.getLogger(__name__)


def subscription_max_in_flight(subscription: Subscription) -> int:
    """How many deliveries may be on the wire to this endpoint at once; 0 for no limit."""
    if subscription.max_in_flight is not None:
        return subscription.max_in_flight
    return settings.HUB_SUBSCRIPTION_MAX_IN_FLIGHT


def subscription_failing(*, subscription: Subscription, now: datetime, delivery: Delivery) -> None:
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
