"""The backlog lane (routing.wakeup): a pump out of time with more due hands its endpoint to a
second queue, marked, and new-work messages for a marked endpoint are dropped; the marked pump
takes the mark off when done and sends what came meanwhile. Through the real broker and cache."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from routing import pump as pump_module
from routing.models import Delivery
from routing.pump import deliveries_pump
from routing.sweeper import deliveries_sweep
from routing.wakeup import BACKLOG_SUFFIX, PUMP_TASK, TURN_LANE, TURN_NEW, pump_begin, pumps_enqueue
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply, queue_drain

pytestmark = pytest.mark.django_db(transaction=True)


def deliveries(sub, count: int) -> list[Delivery]:
    return [
        DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n}, resource_key=None)) for n in range(count)
    ]


def pumps(queue: str) -> list[tuple[list, dict]]:
    return [(args, kwargs) for task, args, kwargs in queue_drain(queue) if task == PUMP_TASK]


@pytest.fixture
def lanes(unconsumed_queue: str) -> tuple[str, str]:
    queue_drain(f"{unconsumed_queue}{BACKLOG_SUFFIX}")
    return unconsumed_queue, f"{unconsumed_queue}{BACKLOG_SUFFIX}"


def test_a_pump_cut_short_by_its_time_hands_the_endpoint_to_the_backlog_lane(subscriber, settings, lanes):
    settings.HUB_DELIVERY_PUMP_SECONDS = 0.3
    subscriber.respond_with("/slow", lambda _request: Reply.slow(0.1))
    sub = SubscriptionFactory(url=subscriber.url("/slow"), max_in_flight=1)
    owed = deliveries(sub, 20)
    result = deliveries_pump(subscription_id=sub.pk)
    assert result.handed_on and 0 < len(result.verdicts) < len(owed)
    main, backlog = lanes
    assert pumps(backlog) == [([sub.pk], {"turn": TURN_LANE})]
    assert pumps(main) == []
    # Marked: a push's message for it is dropped; the handed-on one pumps.
    assert not pump_begin(sub.pk, turn=TURN_NEW)
    assert pump_begin(sub.pk, turn=TURN_LANE)


def test_one_orders_long_chain_out_of_time_is_a_backlog_too(subscriber, settings, lanes):
    """Its batches hold one resource each: full by their deliveries, not their resources."""
    settings.HUB_DELIVERY_PUMP_SECONDS = 0.3
    settings.HUB_DELIVERY_BATCH_SIZE = 5
    subscriber.respond_with("/chain", lambda _request: Reply.slow(0.02))
    sub = SubscriptionFactory(url=subscriber.url("/chain"), max_in_flight=1)
    for n in range(100):
        DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n}, resource_key="order-1"))
    assert deliveries_pump(subscription_id=sub.pk).handed_on
    main, backlog = lanes
    assert pumps(backlog) == [([sub.pk], {"turn": TURN_LANE})]
    assert pumps(main) == []


def test_a_pump_out_of_time_that_sent_all_it_took_stays_in_the_main_queue(subscriber, settings, lanes):
    """Its time ran out on a slow reply, not on a backlog: what comes next is new work."""
    settings.HUB_DELIVERY_PUMP_SECONDS = 0.2
    subscriber.respond_with("/one", lambda _request: Reply.slow(0.4))
    sub = SubscriptionFactory(url=subscriber.url("/one"))
    (only,) = deliveries(sub, 1)
    result = deliveries_pump(subscription_id=sub.pk)
    assert result.handed_on and result.verdicts == {only.pk: "delivered"}
    main, backlog = lanes
    assert pumps(main) == [([sub.pk], {})]
    assert pumps(backlog) == []
    assert pump_begin(sub.pk, turn=TURN_NEW)


def test_the_marked_pump_takes_its_mark_off_and_sends_what_came_while_it_held(subscriber, lanes, monkeypatch):
    """A push commits and its message is dropped (the endpoint marked) just as the handed-on pump
    finds nothing left: the pump looks once more after taking the mark off, and sends it."""
    sub = SubscriptionFactory(url=subscriber.url("/late"))
    assert pumps_enqueue([sub.pk], turn=TURN_LANE) == [sub.pk]
    (first,) = deliveries(sub, 1)
    late: list[Delivery] = []
    unmark = pump_module.backlog_unmark

    def push_then_unmark(ids: list[int]) -> None:
        if not late:
            late.extend(deliveries(sub, 1))
            assert not pump_begin(sub.pk, turn=TURN_NEW)  # its message, dropped
        unmark(ids)

    monkeypatch.setattr(pump_module, "backlog_unmark", push_then_unmark)
    result = deliveries_pump(subscription_id=sub.pk, marked=True)
    assert result.verdicts == {first.pk: "delivered", late[0].pk: "delivered"}
    assert pump_begin(sub.pk, turn=TURN_NEW)  # unmarked


def test_a_marked_pump_of_a_disabled_endpoint_takes_the_mark_off(subscriber, lanes):
    """Else the messages of its return would be dropped until the mark expired."""
    sub = SubscriptionFactory(url=subscriber.url("/off"), is_enabled=False)
    pumps_enqueue([sub.pk], turn=TURN_LANE)
    assert not pump_begin(sub.pk, turn=TURN_NEW)
    deliveries_pump(subscription_id=sub.pk, marked=True)
    assert pump_begin(sub.pk, turn=TURN_NEW)


def test_lost_endpoints_and_hand_ons_wait_in_the_backlog_lane_one_at_a_time(subscriber, settings, lanes):
    """Else every hand-on and full batch of a backlog, or every sweep, would add to the lane for good."""
    sub = SubscriptionFactory(url=subscriber.url("/lost"))
    lost = timezone.now() - timedelta(seconds=settings.HUB_SWEEP_LOST_AFTER_SECONDS + 5)
    DeliveryFactory(subscription=sub, next_attempt_at=lost)
    assert deliveries_sweep().enqueued == 1
    assert deliveries_sweep().enqueued == 0  # its message still waits
    assert pumps_enqueue([sub.pk], turn=TURN_LANE) == []  # a hand-on meanwhile
    main, backlog = lanes
    assert pumps(backlog) == [([sub.pk], {"turn": TURN_LANE})]
    assert pumps(main) == []
    assert not pump_begin(sub.pk, turn=TURN_NEW)  # marked: the lane's pump sends new work too
    assert pump_begin(sub.pk, turn=TURN_LANE)  # the waiting one taken: the next may go
    assert deliveries_sweep().enqueued == 1
