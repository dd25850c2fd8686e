"""A claim takes a resource whose turn has come with the open, due deliveries that follow it, in a
row: one order's chain goes a batch per claim. The run stops where the order's next delivery is not
sendable now, and a batch is sent in each resource's id order, whatever its claim order."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from routing.claim import batch_claim, subscription_read
from routing.models import Delivery
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.routing.test_claim_cost import chain

pytestmark = pytest.mark.django_db


def claimed(sub) -> list[int]:
    batch = batch_claim(sub=subscription_read(sub.pk), budget=5)
    return [] if batch is None else [d.pk for d in batch.deliveries]


def ids(deliveries: list[Delivery]) -> list[int]:
    return [d.pk for d in deliveries]


def test_one_orders_chain_is_taken_as_a_run_of_a_batch_in_one_claim(settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 5
    sub = SubscriptionFactory(max_in_flight=0)
    orders = chain(sub, sent=3, pending=12)
    assert claimed(sub) == ids(orders[3:8])
    # The next claim, the run still on the wire, finds the order's turn taken.
    assert claimed(sub) == []
    Delivery.objects.filter(pk__in=ids(orders[3:8])).update(state="delivered", claim=None)
    assert claimed(sub) == ids(orders[8:13])


@pytest.mark.parametrize(
    "gap",
    [
        {"state": "retrying", "attempt_count": 1, "next_attempt_at": timezone.now() + timedelta(hours=1)},
        {"state": "delivering", "attempt_count": 1, "claim": 7},
    ],
    ids=["not due", "on the wire"],
)
def test_a_run_stops_at_the_first_delivery_that_is_not_sendable_now(gap):
    sub = SubscriptionFactory(max_in_flight=0)
    orders = chain(sub, sent=0, pending=8)
    Delivery.objects.filter(pk=orders[4].pk).update(**gap)
    # What follows the gap waits too, due or not: a resource goes in order or not at all.
    assert claimed(sub) == ids(orders[:4])


def test_a_finished_delivery_within_a_chain_is_no_gap():
    sub = SubscriptionFactory(max_in_flight=0)
    orders = chain(sub, sent=0, pending=6)
    Delivery.objects.filter(pk=orders[2].pk).update(state="cancelled")
    assert claimed(sub) == ids(orders[:2] + orders[3:])


def test_every_resource_whose_turn_has_come_goes_first_then_their_runs_in_the_same_turn(settings):
    """The heads compete for the batch in claim order as alone they did; the runs fill the rest, one
    place at a time: A1 B1 U1 A2 B2 A3 (U1 has no resource key)."""
    settings.HUB_DELIVERY_BATCH_SIZE = 6
    sub = SubscriptionFactory(max_in_flight=0)
    a = chain(sub, sent=0, pending=5, key="order:A")
    b = chain(sub, sent=0, pending=2, key="order:B")
    unkeyed = DeliveryFactory(subscription=sub, event=EventFactory(resource_key=None))
    assert claimed(sub) == [a[0].pk, b[0].pk, unkeyed.pk, a[1].pk, b[1].pk, a[2].pk]


def test_a_retried_head_goes_before_the_deliveries_it_held_back(settings):
    """The head's retry is due after its successors were accepted: claim order would send them
    first; a resource's deliveries go in id order."""
    sub = SubscriptionFactory(max_in_flight=0)
    orders = chain(sub, sent=0, pending=4)
    Delivery.objects.filter(pk=orders[0].pk).update(
        state="retrying", attempt_count=1, next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    batch = batch_claim(sub=subscription_read(sub.pk), budget=5)
    assert batch is not None and ids(batch.deliveries) == ids(orders)
    assert [d.attempt_count for d in batch.deliveries] == [2, 1, 1, 1]


def test_a_full_batch_of_heads_leaves_no_room_for_runs(settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 3
    sub = SubscriptionFactory(max_in_flight=0)
    heads = [chain(sub, sent=0, pending=3, key=f"order:{n}")[0] for n in range(4)]
    assert claimed(sub) == ids(heads[:3])
