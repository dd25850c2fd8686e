"""Reading an event's deliveries, attempts and notifications as its store may see them."""

from __future__ import annotations

import heapq
from typing import Any

from django.db.models import Prefetch

from events.models import Event
from routing.models import DELIVERY_OPEN_STATES, Attempt, Delivery, Notification
from routing.reply_forms import SummaryNote, summary_notes
from routing.transport.exchange import attempt_outcome


def event_deliveries_describe(event: Event) -> dict[str, Any]:
    """The routing side of an event for GET /events/<id>: never a URL, reply or error text (docs/security.md)."""
    deliveries = list(
        Delivery.objects.filter(event=event)
        .select_related("subscription")
        .prefetch_related(Prefetch("attempts", queryset=Attempt.objects.order_by("number")))
        .order_by("id")
    )
    notifications = Notification.objects.filter(event=event).order_by("id")
    return {
        "deliveries": [_delivery_public(d) for d in deliveries],
        # With what the endpoints' replies summed up (routing.reply_forms), in time order.
        "notifications": [
            {
                "level": n.level,
                "subject": n.subject,
                "description": n.description,
                "created_at": n.created_at.isoformat(),
            }
            for n in heapq.merge(notifications, deliveries_summaries(deliveries), key=lambda n: n.created_at)
        ],
    }


def deliveries_summaries(deliveries: list[Delivery]) -> list[SummaryNote]:
    """The summaries of the attempts of deliveries read with their subscription and attempts."""
    return summary_notes((d.subscription.name, a) for d in deliveries for a in d.attempts.all())


def _delivery_public(d: Delivery) -> dict[str, Any]:
    attempts = list(d.attempts.all())
    return {
        "delivery_id": d.pk,
        "subscription": d.subscription.name,
        "state": d.state,
        "attempt_count": d.attempt_count,
        "replay_of": d.replay_of_id,
        "created_at": d.created_at.isoformat(),
        "next_attempt_at": d.next_attempt_at.isoformat() if d.state in DELIVERY_OPEN_STATES else None,
        "last_attempt_at": attempts[-1].started_at.isoformat() if attempts else None,
        "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
        "last_status_code": d.last_status_code,
        "attempts": [
            {
                "number": a.number,
                "started_at": a.started_at.isoformat(),
                "status_code": a.status_code,
                "latency_ms": a.latency_ms,
                "succeeded": a.succeeded,
                "outcome": attempt_outcome(a),
                "summary": a.summary,
            }
            for a in attempts
        ],
    }
