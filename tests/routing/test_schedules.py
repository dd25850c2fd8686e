"""Schedules (routing.schedules): validation, when the next run is, claiming due schedules once,
one catch-up tick after an outage, a tick still open made due rather than doubled, and what a
tick's reply means (saved parameters, the next page at once). Ticks are sent synchronously to
the real local endpoint (tests/live.py's OrdersSource); the live tests are tests/e2e/test_pulling.py."""

from __future__ import annotations

import importlib
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from events.models import Event, EventSource
from routing.models import Delivery, Notification, Schedule
from routing.pump import deliveries_pump
from routing.schedules import schedule_run_now, schedules_run
from routing.timing import schedule_next_run, schedule_validate
from tests.factories import EventFactory, SubscriptionFactory
from tests.live import OrdersSource

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def schedule_for(subscriber, source: OrdersSource | None = None, **fields) -> Schedule:
    source = source or OrdersSource()
    subscriber.respond_with("/pull", source)
    sub = SubscriptionFactory(url=subscriber.url("/pull"), message_types=[])
    fields.setdefault("interval_seconds", 60)
    fields.setdefault("next_run_at", T0)
    return Schedule.objects.create(subscription=sub, **fields)


def ticks(schedule: Schedule) -> list[Event]:
    return list(Event.objects.filter(origin=f"schedule:{schedule.pk}").order_by("id"))


def parameters(schedule: Schedule) -> dict:
    schedule.subscription.refresh_from_db()
    return {p["name"]: p["value"] for p in schedule.subscription.parameters}


# --- Validation and timing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"message": "Get Orders", "interval_seconds": 60, "cron": ""}, "message", "lower case"),
        ({"message": "get_orders", "interval_seconds": None, "cron": ""}, "interval_seconds", "an interval"),
        ({"message": "get_orders", "interval_seconds": 60, "cron": "* * * * *"}, "cron", "not both"),
        ({"message": "get_orders", "interval_seconds": None, "cron": "61 * * * *"}, "cron", "five fields"),
        ({"message": "get_orders", "interval_seconds": None, "cron": "* * * *"}, "cron", "five fields"),
        ({"message": "get_orders", "interval_seconds": 0, "cron": ""}, "interval_seconds", "at least"),
    ],
)
def test_a_schedule_is_refused_with_a_sentence_on_its_field(fields, field, text):
    errors = schedule_validate(**fields)
    assert list(errors) == [field]
    assert text in errors[field]


def test_a_valid_schedule_has_no_errors_and_the_model_checks_the_same():
    assert schedule_validate(message="get_orders", interval_seconds=60, cron="") == {}
    assert schedule_validate(message="order:poll", interval_seconds=None, cron="*/15 * * * *") == {}
    with pytest.raises(ValidationError) as caught:
        Schedule(message="get_orders", interval_seconds=None, cron="").clean()
    assert "interval_seconds" in caught.value.message_dict


def test_the_next_run_stays_on_the_interval_grid_and_skips_missed_slots():
    schedule = Schedule(interval_seconds=60)
    assert schedule_next_run(schedule, now=T0) == T0
    assert schedule_next_run(schedule, now=T0 + timedelta(seconds=1), slot=T0) == T0 + timedelta(seconds=60)
    # Ten intervals late: this run is the catch-up, the next one is the first slot after now.
    late = T0 + timedelta(seconds=605)
    assert schedule_next_run(schedule, now=late, slot=T0) == T0 + timedelta(seconds=660)


def test_the_next_run_of_a_cron_schedule_is_its_next_time_after_now():
    schedule = Schedule(cron="*/15 * * * *")
    assert schedule_next_run(schedule, now=T0 + timedelta(minutes=1)) == T0 + timedelta(minutes=15)
    assert schedule_next_run(schedule, now=T0 + timedelta(hours=5), slot=T0) == T0 + timedelta(hours=5, minutes=15)


# --- Claiming ------------------------------------------------------------------------------------


def test_a_due_schedule_ticks_once_and_moves_its_next_run_on(subscriber, unconsumed_queue):
    schedule = schedule_for(subscriber)
    assert schedules_run(now=T0 + timedelta(seconds=1)) == 1
    assert schedules_run(now=T0 + timedelta(seconds=2)) == 0
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + timedelta(seconds=60)
    assert schedule.last_run_at == T0 + timedelta(seconds=1)
    [tick] = ticks(schedule)
    assert (tick.message, tick.payload, tick.store_id, tick.resource_key) == ("get_orders", {}, None, None)
    [delivery] = Delivery.objects.filter(event=tick)
    assert delivery.subscription_id == schedule.subscription_id
    assert schedule.last_event_id == tick.pk


def test_an_outage_of_ten_intervals_makes_one_catch_up_tick(subscriber, unconsumed_queue):
    schedule = schedule_for(subscriber)
    assert schedules_run(now=T0 + timedelta(seconds=10 * 60 + 5)) == 1
    assert len(ticks(schedule)) == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + timedelta(seconds=11 * 60)


def test_paused_schedules_and_those_of_disabled_subscriptions_do_not_tick(subscriber, unconsumed_queue):
    paused = schedule_for(subscriber, is_paused=True)
    off = schedule_for(subscriber)
    off.subscription.is_enabled = False
    off.subscription.save()
    assert schedules_run(now=T0 + timedelta(hours=1)) == 0
    assert ticks(paused) == ticks(off) == []


def test_a_tick_still_open_is_made_due_instead_of_doubled(subscriber, unconsumed_queue):
    schedule = schedule_for(subscriber)
    schedules_run(now=T0)
    [first] = Delivery.objects.filter(event__in=ticks(schedule))
    Delivery.objects.filter(pk=first.pk).update(state="retrying", next_attempt_at=T0 + timedelta(hours=2))
    assert schedules_run(now=T0 + timedelta(seconds=61)) == 1
    assert len(ticks(schedule)) == 1
    first.refresh_from_db()
    assert first.next_attempt_at == T0 + timedelta(seconds=61)


def test_a_schedule_is_claimed_by_one_of_two_schedulers_at_once(subscriber, unconsumed_queue):
    """Two schedulers' claims in turn: the second finds the slot moved on (the conditional UPDATE)."""
    schedule = schedule_for(subscriber)
    assert schedules_run(now=T0) + schedules_run(now=T0) == 1
    assert len(ticks(schedule)) == 1


def test_run_now_ticks_at_once_and_keeps_the_next_run(subscriber, unconsumed_queue):
    schedule = schedule_for(subscriber, next_run_at=T0 + timedelta(days=1))
    tick = schedule_run_now(schedule_id=schedule.pk)
    assert tick.made
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + timedelta(days=1)
    assert [e.pk for e in ticks(schedule)] == [tick.event_id]


def test_ticks_say_they_were_made_by_a_schedule_and_what_they_return_by_a_reply(subscriber, unconsumed_queue):
    source = OrdersSource()
    source.add("R1")
    schedule = schedule_for(subscriber, source)
    schedules_run(now=T0)
    deliveries_pump(subscription_id=schedule.subscription_id)
    assert schedule_run_now(schedule_id=schedule.pk).made
    deliveries_pump(subscription_id=schedule.subscription_id)
    made = ticks(schedule)
    assert len(made) == 2 and {tick.source for tick in made} == {EventSource.SCHEDULE}
    assert made[0].get_source_display() == "Made by a schedule"
    assert {child.source for child in Event.objects.filter(parent__in=made)} == {EventSource.REPLY}


def test_the_migration_relabels_ticks_stored_as_pushed_by_a_store_and_nothing_else(subscriber, unconsumed_queue):
    from django.apps import apps

    relabel = importlib.import_module("events.migrations.0011_event_source_schedule").ticks_relabel
    schedule = schedule_for(subscriber)
    schedules_run(now=T0)
    [tick] = ticks(schedule)
    Event.objects.filter(pk=tick.pk).update(source=EventSource.STORE)
    pushed = EventFactory(origin="")
    relabel(apps, None)
    assert Event.objects.get(pk=tick.pk).source == EventSource.SCHEDULE
    assert Event.objects.get(pk=pushed.pk).source == EventSource.STORE


# --- What a tick's reply means -------------------------------------------------------------------


def test_objects_a_tick_returns_become_its_children_and_since_moves_on(subscriber, unconsumed_queue):
    source = OrdersSource()
    source.add("R1")
    source.add("R2")
    schedule = schedule_for(subscriber, source)
    schedules_run(now=T0)
    deliveries_pump(subscription_id=schedule.subscription_id)
    [tick] = ticks(schedule)
    assert sorted(tick.children.values_list("resource_key", flat=True)) == ["order:R1", "order:R2"]
    assert parameters(schedule)["since"] == source.orders["R2"]["updated_at"]
    schedule.refresh_from_db()
    assert schedule.last_error == "" and schedule.last_succeeded_at is not None

    # The next tick sends that since, and gets only what changed after it.
    source.add("R3")
    schedules_run(now=T0 + timedelta(seconds=60))
    deliveries_pump(subscription_id=schedule.subscription_id)
    assert source.asked[-1][1] == source.orders["R2"]["updated_at"]
    assert Event.objects.filter(parent__origin=f"schedule:{schedule.pk}").count() == 3


def test_a_failed_tick_keeps_the_old_since_and_says_why(subscriber, unconsumed_queue):
    source = OrdersSource()
    source.add("R1")
    schedule = schedule_for(subscriber, source)
    schedules_run(now=T0)
    deliveries_pump(subscription_id=schedule.subscription_id)
    since = parameters(schedule)["since"]
    source.add("R2")
    source.fail_next()
    schedules_run(now=T0 + timedelta(seconds=60))
    deliveries_pump(subscription_id=schedule.subscription_id)
    assert parameters(schedule)["since"] == since
    schedule.refresh_from_db()
    assert schedule.last_error == "HTTP 500"
    # Made due again by the next run, the same tick asks with the same since and gets R2.
    schedules_run(now=T0 + timedelta(seconds=120))
    Delivery.objects.filter(state="retrying").update(next_attempt_at=timezone.now())
    deliveries_pump(subscription_id=schedule.subscription_id)
    assert [since for _, since, _ in source.asked] == [None, since, since]
    assert parameters(schedule)["since"] == source.orders["R2"]["updated_at"]
    schedule.refresh_from_db()
    assert schedule.last_error == ""


def test_pages_are_fetched_at_once_until_the_last(subscriber, unconsumed_queue):
    source = OrdersSource(page_size=2)
    for n in range(5):
        source.add(f"R{n}")
    schedule = schedule_for(subscriber, source)
    schedules_run(now=T0)
    deliveries_pump(subscription_id=schedule.subscription_id)
    assert [page for _, _, page in source.asked] == [1, 2, 3]
    assert len(ticks(schedule)) == 3
    assert {tick.source for tick in ticks(schedule)} == {EventSource.SCHEDULE}
    assert Event.objects.filter(parent__origin=f"schedule:{schedule.pk}").count() == 5
    assert parameters(schedule) == {"page": 1, "since": source.orders["R4"]["updated_at"]}


def test_pages_stop_at_the_bound_and_say_so(subscriber, unconsumed_queue, settings):
    settings.HUB_SCHEDULE_MAX_PAGES = 2
    source = OrdersSource(page_size=1)
    for n in range(5):
        source.add(f"R{n}")
    schedule = schedule_for(subscriber, source)
    schedules_run(now=T0)
    deliveries_pump(subscription_id=schedule.subscription_id)
    assert [page for _, _, page in source.asked] == [1, 2]
    [note] = Notification.objects.filter(event__origin=f"schedule:{schedule.pk}")
    assert note.subject == "Stopped after 2 pages"


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_share_the_due_schedules_and_tick_each_once(subscriber, unconsumed_queue):
    """Two threads, each with its own connection, run the beat task at the same moment over the
    same due schedules: between them every schedule ticks exactly once. Due a day ahead, so that a
    test worker's beat, which looks at the real time, leaves them (and their ticks) alone."""
    import threading

    from django.db import connection

    subscriber.respond_with("/pull", OrdersSource())
    subs = [SubscriptionFactory(url=subscriber.url("/pull"), message_types=[]) for _ in range(40)]
    ahead = timezone.now() + timedelta(days=1)
    Schedule.objects.bulk_create([Schedule(subscription=s, interval_seconds=60, next_run_at=ahead) for s in subs])
    barrier = threading.Barrier(2)
    counts: list[int] = []
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            barrier.wait(timeout=10)
            counts.append(schedules_run(now=ahead + timedelta(seconds=1)))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sum(counts) == 40
    made = Counter(Event.objects.filter(origin__startswith="schedule:").values_list("origin", flat=True))
    assert len(made) == 40 and set(made.values()) == {1}
    Delivery.objects.update(state="cancelled")
