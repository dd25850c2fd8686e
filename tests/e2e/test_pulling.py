"""Pulling, for real: Celery beat finds due schedules, a worker sends each tick to a local endpoint
that serves `get_orders` with `since` and paging (tests/live.py's OrdersSource), and the orders it
returns flow on as events. Each tick runs once with two beats at work and a worker SIGKILLed, and
an outage of many intervals makes one catch-up tick. No mocks; every wait has a deadline."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from events.models import Event
from routing.models import Delivery, Schedule
from tests.conftest import deliveries_settle
from tests.factories import SubscriptionFactory
from tests.live import OrdersSource, wait_until, workers_paused
from tests.reliability.conftest import worker_new

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def pulling(subscriber, source: OrdersSource, *, interval: int = 1, path: str = "/pull", **fields) -> Schedule:
    """An endpoint that only answers pulls (it subscribes to nothing), pulled every `interval` s."""
    subscriber.respond_with(path, source)
    erp = SubscriptionFactory(url=subscriber.url(path), message_types=[])
    return Schedule.objects.create(subscription=erp, interval_seconds=interval, next_run_at=timezone.now(), **fields)


def orders_made(schedule: Schedule) -> list[str]:
    """The order numbers of the events the schedule's ticks returned, oldest first."""
    rows = Event.objects.filter(parent__origin=f"schedule:{schedule.pk}").order_by("id")
    return [key.split(":", 1)[1] for key in rows.values_list("resource_key", flat=True)]


def ticks(schedule: Schedule) -> list[Event]:
    return list(Event.objects.filter(origin=f"schedule:{schedule.pk}").order_by("id"))


def stop(schedule: Schedule) -> None:
    Schedule.objects.filter(pk=schedule.pk).update(is_paused=True)
    deliveries_settle()


def test_ticks_pull_new_orders_only_and_they_reach_their_subscribers(worker, subscriber):
    source = OrdersSource()
    source.add("R1")
    source.add("R2")
    warehouse = SubscriptionFactory(url=subscriber.url("/wms"), message_types=["order:*"])
    schedule = pulling(subscriber, source)
    try:
        wait_until(lambda: orders_made(schedule) == ["R1", "R2"], 30, message="R1 and R2 pulled")
        since = source.orders["R2"]["updated_at"]
        wait_until(lambda: any(asked[1] == since for asked in source.asked), 30, message="a tick sent the new since")
        source.add("R3")
        wait_until(lambda: "R3" in orders_made(schedule), 30, message="R3 pulled")
        # A few more ticks: nothing new to return, nothing new made.
        count = len(source.asked)
        wait_until(lambda: len(source.asked) >= count + 2, 30, message="two more ticks")
        assert orders_made(schedule) == ["R1", "R2", "R3"]
        # Pushed on like any event: the warehouse got each order once.
        received = wait_until(lambda: len(subscriber.received("/wms")) == 3 and subscriber.received("/wms"), 30)
        assert sorted(r.json()["payload"]["order"]["number"] for r in received) == ["R1", "R2", "R3"]
        assert {r.json()["message"] for r in received} == {"order:new"}
        assert Delivery.objects.filter(subscription=warehouse, event__parent__in=ticks(schedule)).count() == 3
        schedule.refresh_from_db()
        assert schedule.last_error == "" and schedule.last_succeeded_at is not None
        assert schedule.next_run_at > schedule.last_run_at
    finally:
        stop(schedule)


def test_a_failed_tick_keeps_the_old_since(worker, subscriber):
    source = OrdersSource()
    source.add("R1")
    schedule = pulling(subscriber, source)
    try:
        wait_until(lambda: orders_made(schedule) == ["R1"], 30, message="R1 pulled")
        since = source.orders["R1"]["updated_at"]
        source.add("R2")
        source.fail_next(1)
        failed_at = len(source.asked)
        wait_until(lambda: "R2" in orders_made(schedule), 30, message="R2 pulled after the failure")
        # The failed request and the one after it asked with the same since: nothing was skipped.
        assert [asked[1] for asked in source.asked[failed_at : failed_at + 2]] == [since, since]
        assert orders_made(schedule) == ["R1", "R2"]
        failed = [t for t in ticks(schedule) if t.deliveries.get().attempts.filter(status_code=500).exists()]
        assert len(failed) == 1
    finally:
        stop(schedule)


def test_206_pages_are_followed_at_once(worker, subscriber):
    source = OrdersSource(page_size=2)
    for n in range(5):
        source.add(f"R{n}")
    schedule = pulling(subscriber, source, interval=3600)
    try:
        wait_until(lambda: len(orders_made(schedule)) == 5, 30, message="five orders over three pages")
        assert [page for _, _, page in source.asked] == [1, 2, 3]
        pages = ticks(schedule)
        assert [t.message_id.rsplit(":", 1)[-1] for t in pages[1:]] == ["p2", "p3"]
        assert [t.deliveries.get().attempts.get().status_code for t in pages] == [206, 206, 200]
        assert sorted(orders_made(schedule)) == [f"R{n}" for n in range(5)]
    finally:
        stop(schedule)


def test_each_tick_runs_once_with_two_beats_and_a_worker_killed(django_db_setup, subscriber):
    """Two workers, each with its own beat, tick one schedule every second; one is SIGKILLed midway.
    Every tick slot makes one event, and the endpoint hears each tick once (a tick cut on the wire
    by the kill is sent again under the same webhook-id, as any delivery is)."""
    source = OrdersSource()
    with workers_paused():
        first = worker_new("beat-a").start()
        second = worker_new("beat-b").start()
        try:
            schedule = pulling(subscriber, source)
            wait_until(lambda: len(source.asked) >= 4, 60, message="four ticks")
            first.kill()
            seen = len(source.asked)
            wait_until(lambda: len(source.asked) >= seen + 4, 60, message="four more ticks after the kill")
            Schedule.objects.filter(pk=schedule.pk).update(is_paused=True)
            deliveries_settle(60)
        finally:
            first.kill()
            second.stop()
    made = ticks(schedule)
    slots = Counter(t.message_id for t in made)
    assert slots and max(slots.values()) == 1, slots
    heard = Counter(r.headers["webhook-id"] for r in subscriber.received("/pull"))
    assert set(heard) == {str(t.uid) for t in made}
    assert sum(heard.values()) - len(heard) <= 1, heard
    # One tick per second at most, however many beats looked.
    span = (made[-1].created_at - made[0].created_at).total_seconds()
    assert len(made) <= span + 2


def test_an_outage_of_ten_intervals_makes_one_catch_up_tick(worker, subscriber):
    source = OrdersSource()
    schedule = pulling(subscriber, source)
    try:
        wait_until(lambda: len(ticks(schedule)) >= 2, 30, message="two ticks")
        with workers_paused():
            before = len(ticks(schedule))
            time.sleep(10)
            assert len(ticks(schedule)) == before
            restarted = timezone.now()
        # The worker is back: one catch-up tick, then one a second on the schedule's grid.
        wait_until(lambda: len(ticks(schedule)) > before, 30, message="the catch-up tick")
        caught_up = [t for t in ticks(schedule) if t.created_at >= restarted]
        first = caught_up[0].created_at
        within = [t for t in caught_up if t.created_at < first + timedelta(seconds=0.9)]
        assert len(within) == 1
        schedule.refresh_from_db()
        assert schedule.next_run_at > first
    finally:
        stop(schedule)
