"""Reading deliveries, attempts and notifications."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.db.models import Prefetch

from events.models import Event
from routing.models import Attempt, Delivery, Notification


def url_without_query(url: str) -> str:
    """An endpoint's URL as a store may see it: endpoints often take their key in the query string
    (`?api_key=...`), which is theirs, not the store's."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")) if parts.query else url


def event_deliveries_describe(event: Event) -> dict[str, Any]:
    """The routing side of an event for GET /events/<id>: each delivery with its attempts, and
    the notifications endpoints sent back. Secrets and tokens are never included."""
    deliveries = (
        Delivery.objects.filter(event=event)
        .select_related("subscription")
        .prefetch_related(Prefetch("attempts", queryset=Attempt.objects.order_by("number")))
        .order_by("id")
    )
    notifications = Notification.objects.filter(event=event).order_by("id")
    return {
        "deliveries": [
            {
                "delivery_id": d.pk,
                "subscription": d.subscription.name,
                "state": d.state,
                "attempt_count": d.attempt_count,
                "replay_of": d.replay_of_id,
                "next_attempt_at": d.next_attempt_at.isoformat() if d.state in ("pending", "retrying") else None,
                "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
                "attempts": [
                    {
                        "number": a.number,
                        "started_at": a.started_at.isoformat(),
                        "method": a.request_method,
                        "url": url_without_query(a.request_url),
                        "status_code": a.status_code,
                        "latency_ms": a.latency_ms,
                        "response_headers": a.response_headers,
                        "succeeded": a.succeeded,
                        "response_body": a.response_body,
                        "error": a.error,
                    }
                    for a in d.attempts.all()
                ],
            }
            for d in deliveries
        ],
        "notifications": [
            {
                "level": n.level,
                "subject": n.subject,
                "description": n.description,
                "created_at": n.created_at.isoformat(),
            }
            for n in notifications
        ],
    }
