"""Reading deliveries, attempts and notifications, and the enabled subscriptions for routing."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db.models import Prefetch

from events.models import Event
from routing.fields import encrypted_fields
from routing.models import Attempt, Delivery, Notification, Subscription

# (until when, by time.monotonic(), the enabled subscriptions): one read shared by every push of
# this process for HUB_SUBSCRIPTIONS_CACHE_SECONDS. One tuple, replaced whole, so a thread never
# sees a half-updated pair.
_enabled: list[tuple[float, tuple[Subscription, ...]]] = [(0.0, ())]


def subscriptions_enabled() -> list[Subscription]:
    """The enabled subscriptions for routing: everything but the encrypted fields, which routing
    never reads. Read, they would be decrypted for every subscription on every read of the list
    (once a second in each web process) and kept in clear in its memory; a delivery reads them
    when it is sent (and one asked for here would cost a query)."""
    return list(Subscription.objects.filter(is_enabled=True).defer(*encrypted_fields(Subscription)).order_by("id"))


def subscriptions_enabled_for_routing() -> list[Subscription]:
    """The enabled subscriptions, read at most once per HUB_SUBSCRIPTIONS_CACHE_SECONDS per
    process: routing a push needs them, and reading them was one round trip of the three a push
    makes. A subscription saved or deleted through the model (admin, services, API) is seen at
    once by this process, which forgets the list (Subscription.save/delete); any other change
    (another process, a queryset update such as the automatic disable) within the lifetime. That
    staleness is what a push racing the change had anyway, only longer: a delivery made for a
    subscription disabled meanwhile waits like any delivery of a disabled subscription, an
    event routed without one created meanwhile is one the subscription did not exist for yet,
    and one routed to a subscription deleted meanwhile is routed again by the list read anew
    (routing.services: the deleted one's delivery would fail the write).
    The objects are shared by every push of the lifetime: routing only reads them."""
    ttl = settings.HUB_SUBSCRIPTIONS_CACHE_SECONDS
    if ttl <= 0:
        return subscriptions_enabled()
    clock = time.monotonic()
    until, subscriptions = _enabled[0]
    if until <= clock:
        subscriptions = tuple(subscriptions_enabled())
        _enabled[0] = (clock + ttl, subscriptions)
    return list(subscriptions)


def subscriptions_cache_clear() -> None:
    """Forget the enabled subscriptions: the next push reads them again."""
    _enabled[0] = (0.0, ())


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
