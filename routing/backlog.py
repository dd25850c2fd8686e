"""What waits in the delivery queue: deliveries by state, the oldest open one, the most overdue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Min
from django.utils import timezone

from infra.counts import Tallies, tallies_by
from routing.models import DELIVERY_OPEN_STATES, Delivery, DeliveryState


def delivery_state_counts() -> Tallies:
    """Deliveries per state, every state present (0 when none); a state holding more than
    HUB_EXACT_COUNT_LIMIT is PostgreSQL's estimate (infra.counts). Every state but delivered is
    counted on delivery_due, which leaves the delivered out."""
    return tallies_by(Delivery.objects.all(), "state", DeliveryState.values)


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
    """How long the most overdue open delivery has been due (a retry's backoff does not count)."""
    now = now or timezone.now()
    oldest_due = Delivery.objects.filter(state__in=DELIVERY_OPEN_STATES, next_attempt_at__lte=now).aggregate(
        due=Min("next_attempt_at")
    )["due"]
    return max(0.0, (now - oldest_due).total_seconds()) if oldest_due else 0.0
