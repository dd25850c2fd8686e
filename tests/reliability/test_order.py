"""Per-resource order, service level: the real claim against the real database and a real HTTP
subscriber, attempt by attempt, without a worker in between."""

from __future__ import annotations

import pytest
from django.utils import timezone

from events.messages import resource_key
from routing.models import Delivery
from routing.services import (
    deliveries_release,
    deliveries_sweep,
    delivery_attempt,
    delivery_cancel,
)
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply

pytestmark = pytest.mark.django_db


def order_delivery(sub, number: str | None, n: int) -> Delivery:
    key = f"order:{number}" if number else None
    payload = {"order": {"number": number, "seq": n}} if number else {"amazon_order_id": f"A{n}", "seq": n}
    return DeliveryFactory(subscription=sub, event=EventFactory(payload=payload, resource_key=key))


def seqs(subscriber, path: str) -> list[int]:
    return [r.json()["payload"].get("order", r.json()["payload"]).get("seq") for r in subscriber.received(path)]


def refreshed(delivery: Delivery) -> Delivery:
    delivery.refresh_from_db()
    return delivery


def test_a_retrying_delivery_holds_back_only_its_own_resource_on_its_own_endpoint(subscriber):
    erp = SubscriptionFactory(url=subscriber.url("/erp"), retry_schedule=[3600])
    crm = SubscriptionFactory(url=subscriber.url("/crm"))
    subscriber.program("/erp", Reply.error(500), Reply.ok())
    r1_first = order_delivery(erp, "R1", 1)
    r1_second = order_delivery(erp, "R1", 2)
    r2_first = order_delivery(erp, "R2", 3)
    crm_r1 = [order_delivery(crm, "R1", 4), order_delivery(crm, "R1", 5)]

    assert delivery_attempt(delivery_id=r1_first.pk) == "retry"
    # R1's next one waits for the first, spending no attempt; R2 and the other endpoint go ahead.
    assert delivery_attempt(delivery_id=r1_second.pk) is None
    assert refreshed(r1_second).state == "pending" and r1_second.attempt_count == 0
    assert r1_second.enqueued_at is None  # left for whoever frees its turn, not lost in the broker
    assert delivery_attempt(delivery_id=r2_first.pk) == "delivered"
    assert [delivery_attempt(delivery_id=d.pk) for d in crm_r1] == ["delivered", "delivered"]
    assert seqs(subscriber, "/erp") == [1, 3]
    assert seqs(subscriber, "/crm") == [4, 5]

    # The sweeper does not keep enqueueing a delivery that must wait.
    Delivery.objects.filter(pk=r1_first.pk).update(enqueued_at=timezone.now())
    assert r1_second.pk not in _swept()

    # Once the first is delivered, the second's turn has come.
    Delivery.objects.filter(pk=r1_first.pk).update(next_attempt_at=timezone.now())
    assert delivery_attempt(delivery_id=r1_first.pk) == "delivered"
    assert delivery_attempt(delivery_id=r1_second.pk) == "delivered"
    assert seqs(subscriber, "/erp") == [1, 3, 1, 2]


def _swept() -> list[int]:
    before = set(Delivery.objects.filter(enqueued_at__isnull=False).values_list("id", flat=True))
    deliveries_sweep()
    after = set(Delivery.objects.filter(enqueued_at__isnull=False).values_list("id", flat=True))
    return sorted(after - before)


def test_the_end_of_an_attempt_enqueues_the_next_delivery_of_the_resource(subscriber):
    sub = SubscriptionFactory(url=subscriber.url("/erp"))
    first, second, third = (order_delivery(sub, "R7", n) for n in (1, 2, 3))
    assert delivery_attempt(delivery_id=second.pk) is None
    assert delivery_attempt(delivery_id=first.pk) == "delivered"
    # deliveries_release runs on commit after the attempt; here it is called as the commit would.
    assert deliveries_release(subscription_id=sub.pk, resource_key="order:R7") == [second.pk]
    assert refreshed(second).enqueued_at is not None
    assert refreshed(third).enqueued_at is None


def test_payloads_without_a_key_are_unordered(subscriber):
    """seeds/003's Amazon orders carry no order number: nothing to order them by, nothing held."""
    sub = SubscriptionFactory(url=subscriber.url("/amazon"), retry_schedule=[3600])
    subscriber.program("/amazon", Reply.error(500), Reply.ok())
    first, second = order_delivery(sub, None, 1), order_delivery(sub, None, 2)
    assert first.resource_key is None
    assert delivery_attempt(delivery_id=first.pk) == "retry"
    assert delivery_attempt(delivery_id=second.pk) == "delivered"


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_failed_or_cancelled_earlier_delivery_no_longer_holds_back(subscriber, end):
    sub = SubscriptionFactory(url=subscriber.url("/erp"), retry_schedule=[3600])
    subscriber.program("/erp", Reply.error(500), Reply.ok())
    first, second = order_delivery(sub, "R9", 1), order_delivery(sub, "R9", 2)
    assert delivery_attempt(delivery_id=first.pk) == "retry"
    assert delivery_attempt(delivery_id=second.pk) is None
    if end == "cancelled":
        assert delivery_cancel(delivery_id=first.pk)
    else:
        Delivery.objects.filter(pk=first.pk).update(state="failed")
    assert delivery_attempt(delivery_id=second.pk) == "delivered"


def test_resource_key_paths_are_configurable_per_message_type(settings):
    settings.HUB_RESOURCE_KEY_PATHS = {
        "shipment:confirm": ["shipment.order_number"],
        "order:*": ["order.reference"],
    }
    shipment = {"shipment": {"number": "H1", "order_number": "R5"}}
    assert resource_key("shipment:confirm", shipment) == "shipment:R5"
    assert resource_key("shipment:ready", shipment) == "shipment:H1"  # unlisted: the default paths
    assert resource_key("order:new", {"order": {"number": "R1", "reference": "X9"}}) == "order:X9"
    assert resource_key("order:new", {"order": {"number": "R1"}}) is None  # configured path absent


def test_resource_key_paths_are_read_from_the_environment(monkeypatch):
    import importlib

    import integrator.settings as hub_settings

    monkeypatch.setenv("HUB_RESOURCE_KEY_PATHS", "order:*=order.number|order.id; shipment:confirm=shipment.order")
    try:
        reloaded = importlib.reload(hub_settings)
        assert reloaded.HUB_RESOURCE_KEY_PATHS == {
            "order:*": ["order.number", "order.id"],
            "shipment:confirm": ["shipment.order"],
        }
    finally:
        monkeypatch.delenv("HUB_RESOURCE_KEY_PATHS")
        importlib.reload(hub_settings)
