"""Reading deliveries, attempts and notifications, and the enabled subscriptions for routing."""

from __future__ import annotations

import heapq
import time
from typing import Any

from django.conf import settings
from django.db.models import Prefetch

from events.models import Event
from routing.attempts import attempt_outcome
from routing.fields import encrypted_fields
from routing.models import DELIVERY_OPEN_STATES, Attempt, Delivery, Notification, Subscription
from routing.reply_forms import SummaryNote, summary_notes

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


def subscription_parameters_read(subscription_id: int) -> list[Any]:
    """A subscription's parameters as stored now (a reply may just have merged some)."""
    stored = Subscription.objects.filter(pk=subscription_id).values_list("parameters", flat=True).first()
    return list(stored or [])


def event_deliveries_describe(event: Event) -> dict[str, Any]:
    """The routing side of an event for GET /events/<id>, as its store may see it: how each
    delivery fared (subscription name, state, attempts with their times and status codes) and the
    notifications endpoints addressed to the store. Never an endpoint's URL (its host, its
    credentials, a key in its query string), reply headers, reply body or error text: an endpoint
    that echoes its request shows its X-Hub-Token there. Those are the admin's."""
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
