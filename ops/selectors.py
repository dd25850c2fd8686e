"""What ops ask of the database: the subscriptions that keep failing and the failed deliveries to
replay. (The queue's own state is routing.backlog.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Q, QuerySet

from routing.models import Delivery, DeliveryState, Subscription


@dataclass(frozen=True)
class FailingSubscription:
    name: str
    url: str
    is_enabled: bool
    disabled_reason: str
    failed: int
    retrying: int
    last_failure_at: datetime | None


def subscriptions_failing(*, limit: int = 20) -> list[FailingSubscription]:
    """Subscriptions with failed or retrying deliveries, or disabled by the hub, worst first."""
    failing = Q(deliveries__state=DeliveryState.FAILED)
    retrying = Q(deliveries__state=DeliveryState.RETRYING)
    rows = (
        Subscription.objects.annotate(
            failed=Count("deliveries", filter=failing),
            retrying=Count("deliveries", filter=retrying),
            last_failure_at=Max("deliveries__updated_at", filter=failing | retrying),
        )
        .filter(Q(failed__gt=0) | Q(retrying__gt=0) | (Q(is_enabled=False) & ~Q(disabled_reason="")))
        .order_by("-failed", "-retrying", "name")[:limit]
    )
    return [
        FailingSubscription(
            name=s.name,
            url=s.url,
            is_enabled=s.is_enabled,
            disabled_reason=s.disabled_reason,
            failed=s.failed,
            retrying=s.retrying,
            last_failure_at=s.last_failure_at,
        )
        for s in rows
    ]


def deliveries_failed(
    *, subscription: str | None = None, message: str | None = None, since: datetime | None = None
) -> QuerySet[Delivery]:
    """Failed deliveries, oldest first, narrowed by subscription name, message (exact, or a
    wildcard such as 'order:*') and creation time."""
    qs = Delivery.objects.filter(state=DeliveryState.FAILED)
    if subscription:
        qs = qs.filter(subscription__name=subscription)
    if message:
        if message.endswith(":*"):
            qs = qs.filter(event__message__startswith=message[:-1])
        elif message != "*":
            qs = qs.filter(event__message=message)
    if since:
        qs = qs.filter(created_at__gte=since)
    return qs.order_by("id")
