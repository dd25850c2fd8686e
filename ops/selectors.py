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
    """Subscriptions with failed or retrying deliveries, or disabled by the hub, worst first.

    Only failed and retrying deliveries are read (on delivery_due, which leaves delivered ones
    out): a join of every delivery took ~1.2 s per million stored."""
    failing = (DeliveryState.FAILED, DeliveryState.RETRYING)
    stats = {
        row["subscription_id"]: row
        for row in Delivery.objects.filter(state__in=failing)
        .order_by()
        .values("subscription_id")
        .annotate(
            failed=Count("id", filter=Q(state=DeliveryState.FAILED)),
            retrying=Count("id", filter=Q(state=DeliveryState.RETRYING)),
            last_failure_at=Max("updated_at"),
        )
    }
    subs = Subscription.objects.filter(Q(pk__in=stats) | (Q(is_enabled=False) & ~Q(disabled_reason="")))
    none = {"failed": 0, "retrying": 0, "last_failure_at": None}
    found = []
    for s in subs:
        row = stats.get(s.pk, none)
        found.append(
            FailingSubscription(
                name=s.name,
                url=s.url,
                is_enabled=s.is_enabled,
                disabled_reason=s.disabled_reason,
                failed=row["failed"],
                retrying=row["retrying"],
                last_failure_at=row["last_failure_at"],
            )
        )
    found.sort(key=lambda f: (-f.failed, -f.retrying, f.name))
    return found[:limit]


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
