from __future__ import annotations

from collections.abc import Callable

import pytest
from django.utils import timezone

from events.models import Event
from routing.models import Delivery
from tests.factories import AttemptFactory, DeliveryFactory, EventFactory, NotificationFactory, SubscriptionFactory


def order_history(number: str, *, subscriptions: list, store=None) -> Event:
    """One order as the admin sees it: an order:new event delivered to the first subscription
    (with a notification back and an event returned in reply) and failed at the others."""
    event = EventFactory(
        message="order:new",
        message_id=f"msg-{number}",
        payload={"order": {"number": number, "total": "10.00", "line_items": [{"sku": "A", "quantity": 1}]}},
        resource_key=f"order:{number}",
        status="partially_failed" if len(subscriptions) > 1 else "delivered",
        **({"store": store} if store is not None else {}),
    )
    first, *others = subscriptions
    ok = DeliveryFactory(
        event=event, subscription=first, state="delivered", attempt_count=1, delivered_at=timezone.now()
    )
    AttemptFactory(delivery=ok, number=1, status_code=200, succeeded=True, response_body='{"ok": true}', latency_ms=7)
    NotificationFactory(delivery=ok, subject=f"Order {number} imported", description="as sales order 42")
    EventFactory(
        store=None,
        message="shipment:confirm",
        message_id=f"reply-{number}",
        payload={"shipment": {"number": f"H{number}", "order_number": number}},
        resource_key=f"shipment:H{number}",
        source="reply",
        parent=event,
        depth=1,
        status="unrouted",
    )
    for sub in others:
        failed = DeliveryFactory(event=event, subscription=sub, state="failed", attempt_count=2)
        AttemptFactory(delivery=failed, number=1, status_code=500)
        AttemptFactory(delivery=failed, number=2, status_code=None, response_body="", error="connection refused")
    return event


@pytest.fixture
def make_orders(db) -> Callable[[int], list[Event]]:
    """`make_orders(n)`: n orders, each with two deliveries (one delivered, one failed), three
    attempts, a notification and a returned event."""
    subscriptions = [SubscriptionFactory(name="erp"), SubscriptionFactory(name="crm")]

    def make(count: int) -> list[Event]:
        start = Event.objects.count()
        return [order_history(f"R{start + i:06d}", subscriptions=subscriptions) for i in range(count)]

    return make


@pytest.fixture
def failed_delivery(db) -> Delivery:
    delivery = DeliveryFactory(state="failed", attempt_count=1)
    Event.objects.filter(pk=delivery.event_id).update(status="failed")
    AttemptFactory(delivery=delivery, number=1, status_code=500)
    return delivery
