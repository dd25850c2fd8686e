"""What ops ask of the database: the delivery queue by state, its oldest waiting delivery, and the
subscriptions that keep failing. Shared by `hubstatus` and the /metrics collector."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Min, Q, QuerySet
from django.utils import timezone

from routing.models import DELIVERY_OPEN_STATES, Delivery, DeliveryState, Subscription


def delivery_state_counts() -> dict[str, int]:
    """Deliveries per state, every state present (0 when none)."""
    counts = {state: 0 for state in DeliveryState.values}
    for row in Delivery.objects.order_by().values("state").annotate(n=Count("id")):
        counts[row["state"]] = row["n"]
    return counts


@dataclass(frozen=True)
class OldestWaiting:
    delivery_id: int
    subscription: str
    state: str
    created_at: datetime
    age_seconds: float


def delivery_oldest_open(*, now: datetime | None = None) -> OldestWaiting | None:
    """The oldest delivery still waiting to be delivered (pending or retrying)."""
    now = now or timezone.now()
    row = (
        Delivery.objects.filter(state__in=DELIVERY_OPEN_STATES)
        .order_by("created_at", "id")
        .values("id", "subscription__name", "state", "created_at")
        .first()
    )
    if row is None:
        return None
    return OldestWaiting(
        delivery_id=row["id"],
        subscription=row["subscription__name"],
        state=row["state"],
        created_at=row["created_at"],
        age_seconds=max(0.0, (now - row["created_at"]).total_seconds()),
    )


def delivery_due_lag_seconds(*, now: datetime | None = None) -> float:
    """How long the most overdue open delivery has been due: workers falling behind show here
    first, while a delivery waiting out its retry backoff does not count."""
    now = now or timezone.now()
    oldest_due = Delivery.objects.filter(state__in=DELIVERY_OPEN_STATES, next_attempt_at__lte=now).aggregate(
        due=Min("next_attempt_at")
    )["due"]
    return max(0.0, (now - oldest_due).total_seconds()) if oldest_due else 0.0


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
