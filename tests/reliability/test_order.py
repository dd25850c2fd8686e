"""Per-resource order, service level: the real claim against the real database and a real HTTP
subscriber, attempt by attempt, without a worker in between."""

from __future__ import annotations

import pytest
from django.utils import timezone

from events.messages import resource_key
from routing.models import Delivery
from routing.operations import delivery_cancel
from routing.pump import deliveries_pump
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply, pump_for

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

    # R1's next one waits for the first, spending no attempt; R2 and the other endpoint go ahead.
    assert deliveries_pump(subscription_id=erp.pk).verdicts == {r1_first.pk: "retry", r2_first.pk: "delivered"}
    assert refreshed(r1_second).state == "pending" and r1_second.attempt_count == 0
    assert deliveries_pump(subscription_id=crm.pk).verdicts == {d.pk: "delivered" for d in crm_r1}
    assert seqs(subscriber, "/erp") == [1, 3]
    assert seqs(subscriber, "/crm") == [4, 5]

    # A worker sent to the endpoint (a push's message, the sweeper's) finds nothing it may send.
    assert deliveries_pump(subscription_id=erp.pk).verdicts == {}
    assert refreshed(r1_second).attempt_count == 0

    # Once the first is delivered, the second's turn has come.
    Delivery.objects.filter(pk=r1_first.pk).update(next_attempt_at=timezone.now())
    verdicts = deliveries_pump(subscription_id=erp.pk).verdicts
    assert verdicts == {r1_first.pk: "delivered", r1_second.pk: "delivered"}
    assert seqs(subscriber, "/erp") == [1, 3, 1, 2]


def test_one_worker_sends_a_resource_chain_in_order_without_a_broker_round(subscriber):
    """Each delivery of an order is claimed only once its predecessor has ended; the worker that
    sent the predecessor claims it next, in the same task."""
    sub = SubscriptionFactory(url=subscriber.url("/erp"))
    first, second, third = (order_delivery(sub, "R7", n) for n in (1, 2, 3))
    other = order_delivery(sub, "R8", 4)
    result = deliveries_pump(subscription_id=sub.pk)
    assert result.verdicts == {d.pk: "delivered" for d in (first, second, third, other)}
    # R7's three in order; R8, claimed in the first batch beside R7's first, went in between.
    assert [s for s in seqs(subscriber, "/erp") if s != 4] == [1, 2, 3]
    assert seqs(subscriber, "/erp").index(4) == 1
    assert [refreshed(d).attempt_count for d in (first, second, third)] == [1, 1, 1]


def test_payloads_without_a_key_are_unordered(subscriber):
    """seeds/003's Amazon orders carry no order number: nothing to order them by, nothing held."""
    sub = SubscriptionFactory(url=subscriber.url("/amazon"), retry_schedule=[3600])
    subscriber.program("/amazon", Reply.error(500), Reply.ok())
    first, second = order_delivery(sub, None, 1), order_delivery(sub, None, 2)
    assert first.resource_key is None
    assert deliveries_pump(subscription_id=sub.pk).verdicts == {first.pk: "retry", second.pk: "delivered"}


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_failed_or_cancelled_earlier_delivery_no_longer_holds_back(subscriber, end):
    sub = SubscriptionFactory(url=subscriber.url("/erp"), retry_schedule=[3600])
    subscriber.program("/erp", Reply.error(500), Reply.ok())
    first, second = order_delivery(sub, "R9", 1), order_delivery(sub, "R9", 2)
    assert pump_for(first.pk) == "retry"
    assert pump_for(second.pk) is None
    if end == "cancelled":
        assert delivery_cancel(delivery_id=first.pk)
    else:
        Delivery.objects.filter(pk=first.pk).update(state="failed")
    assert pump_for(second.pk) == "delivered"


def test_resource_key_paths_are_configurable_per_message_type(settings):
    settings.HUB_RESOURCE_KEY_PATHS = {
        "shipment:confirm": ["shipment.order_number"],
        "order:*": ["order.reference"],
    }
    shipment = {"shipment": {"number": "H1", "order_number": "R5"}}
    assert resource_key("shipment:confirm", shipment) == "order:R5"  # a path to an order number keys the order
    assert resource_key("shipment:ready", {"shipment": {"number": "H1"}}) == "shipment:H1"  # unlisted: defaults
    assert resource_key("order:new", {"order": {"number": "R1", "reference": "X9"}}) == "order:X9"
    assert resource_key("order:new", {"order": {"number": "R1"}}) is None  # configured path absent


@pytest.mark.parametrize(
    ("message", "payload", "key"),
    [
        ("shipment:confirm", {"shipment": {"number": "H9", "order_number": "R104702249"}}, "order:R104702249"),
        ("shipment:ready", {"shipment": {"number": "H9", "order": {"number": "R7"}}}, "order:R7"),
        ("payment:ready", {"payment": {"id": 12, "order_number": "R8"}}, "order:R8"),
        ("payment:ready", {"order_number": "R9", "payment": {"id": 12}}, "order:R9"),
        ("shipment:confirm", {"shipment": {"number": "H9"}}, "shipment:H9"),
        ("product:updated", {"product": {"id": "SKU-1"}}, "product:SKU-1"),
        ("order:new", {"order": {"number": "R1", "order_number": "X"}}, "order:R1"),
    ],
)
def test_shipments_and_payments_are_keyed_to_their_order_by_default(settings, message, payload, key):
    settings.HUB_RESOURCE_KEY_PATHS = {}
    assert resource_key(message, payload) == key


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
