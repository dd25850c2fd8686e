"""A pump's batch sized to its endpoint's pace (routing.pacing), against real local subscribers on
the real database, pumps called in-process: a fast endpoint's batches are HUB_DELIVERY_BATCH_SIZE,
a slow one's hold what its time per request fits into the pump's budget (the subscriber's delay is
the least a request can take, so the bounds below hold however slow the machine), never fewer than
one; a timeout counts as the time it took; one order's deliveries still go in order."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.utils import timezone

from routing import pacing, pump
from routing.fanout import deliveries_fan_out
from routing.models import Delivery, Subscription
from routing.pump import PumpResult, deliveries_pump
from routing.wakeup import TURN_LANE, pump_begin
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Received, Reply

pytestmark = pytest.mark.django_db

CAP = 10

Pump = Callable[[Subscription], tuple[PumpResult, list[int]]]


@pytest.fixture
def pumped(monkeypatch, settings, unconsumed_queue) -> Pump:
    """Runs one pump of an endpoint: its result, and how many deliveries each of its batches
    claimed (the real claim, watched)."""
    settings.HUB_DELIVERY_BATCH_SIZE = CAP
    settings.HUB_DELIVERY_PUMP_SECONDS = 1.0
    # Turns of exactly that length: these tests size batches to a turn's time.
    settings.HUB_DELIVERY_PUMP_JITTER = 0
    claimed: list[int] = []
    claim = pump.batch_claim

    def watched(**kwargs):
        batch = claim(**kwargs)
        if batch is not None:
            claimed.append(len(batch.deliveries))
        return batch

    monkeypatch.setattr(pump, "batch_claim", watched)

    def run(sub: Subscription) -> tuple[PumpResult, list[int]]:
        claimed.clear()
        # As a worker takes the message the last pump handed on: the next hand-on may publish.
        pump_begin(sub.pk, turn=TURN_LANE)
        result = deliveries_pump(subscription_id=sub.pk, marked=True)
        return result, list(claimed)

    return run


def backlog(sub: Subscription, count: int) -> list[Delivery]:
    return [
        DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n}, resource_key=None)) for n in range(count)
    ]


def pump_out(pumped: Pump, sub: Subscription, count: int) -> list[list[int]]:
    """Pumps the endpoint until `count` deliveries are delivered: each pump's batches."""
    pumps: list[list[int]] = []
    delivered = 0
    while delivered < count:
        result, batches = pumped(sub)
        assert batches, f"nothing left to claim after {delivered} of {count} delivered"
        delivered += list(result.verdicts.values()).count("delivered")
        pumps.append(batches)
    return pumps


def test_a_slow_endpoints_batches_hold_what_its_pace_fits_a_fast_ones_the_whole_batch(subscriber, pumped):
    fast = SubscriptionFactory(url=subscriber.url("/fast"), max_in_flight=1)
    slow = SubscriptionFactory(url=subscriber.url("/slow"), max_in_flight=1)
    subscriber.program("/slow", Reply.slow(0.3))
    backlog(fast, 25)
    backlog(slow, 10)

    fast_batches = [size for batches in pump_out(pumped, fast, 25) for size in batches]
    slow_pumps = pump_out(pumped, slow, 10)

    assert fast_batches == [CAP, CAP, 5]
    # A process that has not sent to the endpoint takes a whole batch, and learns its pace from it;
    # from then on a batch holds no more than a second fits at 0.3 s a request.
    assert slow_pumps[0] == [CAP]
    later = [size for batches in slow_pumps[1:] for size in batches]
    assert later and max(later) <= 3
    assert len(subscriber.received("/slow")) == 10


def test_an_endpoint_slower_than_the_pumps_budget_gets_batches_of_one(subscriber, pumped, settings):
    settings.HUB_DELIVERY_PUMP_SECONDS = 0.5
    sub = SubscriptionFactory(url=subscriber.url("/slower"), max_in_flight=1)
    subscriber.program("/slower", Reply.slow(0.6))
    deliveries = backlog(sub, 3)

    pumps = []
    for _ in deliveries:
        result, batches = pumped(sub)
        assert list(result.verdicts.values()) == ["delivered"] and result.handed_on
        pumps.append(batches)

    # The first pump's batch of three sent one within its time and gave two back; then one each.
    assert pumps == [[3], [1], [1]]
    assert [r.json()["payload"]["n"] for r in subscriber.received("/slower")] == [0, 1, 2]


def test_a_slow_endpoint_first_met_in_a_fan_out_gets_a_first_pump_batch_its_budget_fits(subscriber, pumped):
    slow = SubscriptionFactory(url=subscriber.url("/fanned-slow"), max_in_flight=1)
    other = SubscriptionFactory(url=subscriber.url("/fanned-fast"), max_in_flight=1)
    subscriber.program("/fanned-slow", Reply.slow(0.3))
    event = EventFactory(payload={"n": "fanned"}, resource_key=None)
    fanned = [DeliveryFactory(subscription=sub, event=event) for sub in (slow, other)]
    assert set(deliveries_fan_out(delivery_ids=[d.pk for d in fanned]).verdicts.values()) == {"delivered"}
    backlog(slow, 10)

    pumps = pump_out(pumped, slow, 10)

    # The fan-out's 0.3 s answer set the pace: a second's pump claims no more than it can send.
    assert max(size for batches in pumps for size in batches) <= 3
    assert len(subscriber.received("/fanned-slow")) == 11


def test_a_timeout_counts_as_the_time_it_took(subscriber, pumped, settings):
    settings.HUB_DELIVERY_PUMP_SECONDS = 0.5
    sub = SubscriptionFactory(
        url=subscriber.url("/stalls"), max_in_flight=1, timeout_seconds=0.5, retry_schedule=[3600]
    )
    backlog(sub, 2)
    assert pumped(sub)[1] == [2]  # instant answers: the pace fits the whole batch

    subscriber.program("/stalls", Reply.slow(2.0))
    backlog(sub, 4)
    result, batches = pumped(sub)
    assert batches == [4] and list(result.verdicts.values()) == ["retry"]
    # Half a second a request fits less than the pump's half second: one at a time.
    result, batches = pumped(sub)
    assert batches == [1] and list(result.verdicts.values()) == ["retry"]


def test_one_orders_deliveries_go_in_order_through_small_batches(subscriber, pumped, settings):
    """Two orders to a slow endpoint, the first order's third delivery failing once: its later ones
    wait for its retry whatever the batches' sizes, and nothing is sent twice but the retry."""
    settings.HUB_DELIVERY_PUMP_SECONDS = 0.5
    sub = SubscriptionFactory(url=subscriber.url("/erp"), max_in_flight=1, retry_schedule=[3600])
    answered: set[tuple[str, int]] = set()

    def answer(request: Received) -> Reply:
        order = request.json()["payload"]["order"]
        key = (order["number"], order["seq"])
        first = key not in answered
        answered.add(key)
        return Reply(500, json={"error": "busy"}, delay=0.2) if key == ("R1", 3) and first else Reply.slow(0.2)

    subscriber.respond_with("/erp", answer)
    runs = {
        number: [
            DeliveryFactory(
                subscription=sub,
                event=EventFactory(payload={"order": {"number": number, "seq": n}}, resource_key=f"order:{number}"),
            )
            for n in range(1, count + 1)
        ]
        for number, count in (("R1", 5), ("R2", 3))
    }

    pumps = pump_out(pumped, sub, 4)  # R1's first two and R2's three; R1's third is retrying
    assert Delivery.objects.get(pk=runs["R1"][2].pk).state == "retrying"
    assert not pumped(sub)[1]  # R1's fourth and fifth wait for the retry
    Delivery.objects.filter(pk=runs["R1"][2].pk).update(next_attempt_at=timezone.now())
    pumps += pump_out(pumped, sub, 3)

    # After the first batch, none holds more than half a second fits at 0.2 s a request.
    assert max(size for batches in pumps[1:] for size in batches) <= 2
    sent = [
        (r.json()["payload"]["order"]["number"], r.json()["payload"]["order"]["seq"]) for r in subscriber.received()
    ]
    assert [seq for number, seq in sent if number == "R1"] == [1, 2, 3, 3, 4, 5]
    assert [seq for number, seq in sent if number == "R2"] == [1, 2, 3]
    assert set(Delivery.objects.filter(subscription=sub).values_list("state", flat=True)) == {"delivered"}


def test_the_pace_sizes_a_batch_from_one_to_the_cap(settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 100
    assert pacing.batch_size(1, remaining=5) == 100  # nothing known of it in this process
    pacing.batch_sent(1, seconds=0.0, requests=3)
    assert pacing.batch_size(1, remaining=5) == 100
    pacing.batch_sent(2, seconds=2.0, requests=4)  # half a second a request
    assert pacing.batch_size(2, remaining=5) == 10
    assert pacing.batch_size(2, remaining=1.2) == 2
    assert pacing.batch_size(2, remaining=0.1) == 1
    assert pacing.batch_size(2, remaining=-1) == 1
    # Slower takes over at once; faster comes in by weight, a request a step.
    pacing.batch_sent(2, seconds=1.0, requests=1)
    assert pacing.batch_size(2, remaining=5) == 5
    pacing.batch_sent(2, seconds=0.0, requests=1)
    assert pacing.batch_size(2, remaining=5) == 6  # 0.8 s a request
    pacing.batch_sent(2, seconds=0.0, requests=50)
    assert pacing.batch_size(2, remaining=5) == 100


def test_a_process_forgets_the_least_recently_sent_to_endpoint_past_its_limit(monkeypatch, settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 100
    monkeypatch.setattr(pacing, "_REMEMBERED", 3)
    for sub_id in (1, 2, 3):
        pacing.batch_sent(sub_id, seconds=1.0, requests=1)
    pacing.batch_sent(1, seconds=1.0, requests=1)
    pacing.batch_sent(4, seconds=1.0, requests=1)
    assert [pacing.batch_size(sub_id, remaining=5) for sub_id in (1, 2, 3, 4)] == [5, 100, 5, 5]
