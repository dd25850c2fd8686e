"""The services the admin and ops call: sweep, retry now, cancel, replay, send a test."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from events.models import Event
from routing.models import Attempt, Delivery
from routing.operations import (
    TEST_MESSAGE,
    delivery_cancel,
    delivery_replay,
    delivery_retry_now,
    subscription_send_test,
)
from routing.sweeper import deliveries_sweep, endpoints_lost
from tests.factories import DeliveryFactory, SubscriptionFactory
from tests.live import Reply, pump_for


def refreshed(delivery: Delivery) -> Delivery:
    delivery.refresh_from_db()
    return delivery


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_for_one_delivery_send_it_once(subscriber):
    """Real threads on their own database connections pump the same endpoint at the same moment."""
    subscriber.program("/race", Reply.slow(0.3))
    # Due just now, so that a test worker's sweeper, if one runs, does not join the race.
    delivery = DeliveryFactory(subscription=SubscriptionFactory(url=subscriber.url("/race")))
    barrier = threading.Barrier(4)
    verdicts: list[str | None] = []

    def work() -> None:
        try:
            barrier.wait()
            verdicts.append(pump_for(delivery.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(verdicts, key=str) == [None, None, None, "delivered"]
    assert len(subscriber.received("/race")) == 1
    assert Attempt.objects.filter(delivery=delivery).count() == 1


@pytest.mark.django_db
def test_sweep_wakes_each_endpoint_with_a_delivery_due_too_long(settings):
    settings.HUB_SWEEP_LOST_AFTER_SECONDS = 30
    now = timezone.now()
    lost = DeliveryFactory(next_attempt_at=now - timedelta(minutes=5))
    DeliveryFactory(subscription=lost.subscription, next_attempt_at=now - timedelta(minutes=4))
    just_due = DeliveryFactory(next_attempt_at=now)  # its push's message is on its way
    future = DeliveryFactory(next_attempt_at=now + timedelta(hours=1))
    off = DeliveryFactory(next_attempt_at=now - timedelta(minutes=5), subscription__is_enabled=False)
    done = DeliveryFactory(next_attempt_at=now - timedelta(minutes=5), state="delivered")
    woken = endpoints_lost(now=now)
    assert woken == [lost.subscription_id]  # once, however many of its deliveries are due
    for untouched in (just_due, future, off, done):
        assert untouched.subscription_id not in woken
    assert deliveries_sweep().enqueued == 1  # one message, published to the real broker


@pytest.mark.django_db
def test_sweep_leaves_an_endpoint_behind_but_being_sent_to_alone(settings):
    """A backlog older than the lost-message age while a live claim sends it: not lost, only
    behind; once that claim's lease has run out, it is."""
    settings.HUB_SWEEP_LOST_AFTER_SECONDS = 30
    now = timezone.now()
    behind = DeliveryFactory(next_attempt_at=now - timedelta(minutes=5))
    DeliveryFactory(subscription=behind.subscription, state="delivering", lease_expires_at=now + timedelta(seconds=5))
    assert endpoints_lost(now=now) == []
    assert endpoints_lost(now=now + timedelta(seconds=6)) == [behind.subscription_id]


@pytest.mark.django_db
def test_sweep_reclaims_a_delivery_whose_worker_vanished():
    delivery = DeliveryFactory()
    Delivery.objects.filter(pk=delivery.pk).update(
        state="delivering", attempt_count=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    result = deliveries_sweep()
    assert result.reclaimed == 1
    delivery = refreshed(delivery)
    assert delivery.state == "retrying" and delivery.lease_expires_at is None
    attempt = delivery.attempts.get()
    assert attempt.number == 1 and "lease expired" in attempt.error
    assert result.enqueued == 1  # and it is due again at once


@pytest.mark.django_db
def test_sweep_leaves_a_live_lease_alone():
    delivery = DeliveryFactory()
    Delivery.objects.filter(pk=delivery.pk).update(
        state="delivering", attempt_count=1, lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    assert deliveries_sweep().reclaimed == 0
    assert refreshed(delivery).state == "delivering"


@pytest.mark.django_db
def test_retry_now_gives_a_failed_delivery_one_more_attempt(subscriber):
    subscriber.program("/hook", Reply.error(500), Reply.ok())
    delivery = DeliveryFactory(subscription=SubscriptionFactory(url=subscriber.url("/hook"), retry_enabled=False))
    assert pump_for(delivery.pk) == "failed"
    assert delivery_retry_now(delivery_id=delivery.pk) is True
    assert refreshed(delivery).state == "retrying"
    assert delivery_retry_now(delivery_id=delivery.pk) is True  # still waiting: harmless to ask again
    assert pump_for(delivery.pk) == "delivered"
    assert delivery_retry_now(delivery_id=delivery.pk) is False
    delivery.event.refresh_from_db()
    assert delivery.event.status == "delivered"


@pytest.mark.django_db
def test_retry_now_makes_a_waiting_delivery_due():
    delivery = DeliveryFactory()
    Delivery.objects.filter(pk=delivery.pk).update(
        state="retrying", next_attempt_at=timezone.now() + timedelta(hours=5)
    )
    assert delivery_retry_now(delivery_id=delivery.pk) is True
    assert refreshed(delivery).next_attempt_at <= timezone.now()


@pytest.mark.django_db
def test_cancel_stops_a_waiting_delivery_once(subscriber):
    delivery = DeliveryFactory(subscription=SubscriptionFactory(url=subscriber.url("/hook")))
    assert delivery_cancel(delivery_id=delivery.pk) is True
    assert delivery_cancel(delivery_id=delivery.pk) is False
    assert refreshed(delivery).state == "cancelled"
    assert pump_for(delivery.pk) is None
    assert subscriber.received() == []
    assert delivery_retry_now(delivery_id=delivery.pk) is False


@pytest.mark.django_db
def test_cancel_leaves_delivered_alone(subscriber):
    delivery = DeliveryFactory(subscription=SubscriptionFactory(url=subscriber.url("/hook")))
    pump_for(delivery.pk)
    assert delivery_cancel(delivery_id=delivery.pk) is False
    assert refreshed(delivery).state == "delivered"


@pytest.mark.django_db
def test_replay_sends_the_same_event_again_and_asking_twice_makes_one(subscriber):
    subscriber.program("/hook", Reply.error(500), Reply.ok())
    delivery = DeliveryFactory(subscription=SubscriptionFactory(url=subscriber.url("/hook"), retry_enabled=False))
    pump_for(delivery.pk)
    delivery.event.refresh_from_db()
    assert delivery.event.status == "failed"

    replay = delivery_replay(delivery_id=delivery.pk)
    assert delivery_replay(delivery_id=delivery.pk).pk == replay.pk
    assert (replay.event_id, replay.subscription_id, replay.replay_of_id) == (
        delivery.event_id,
        delivery.subscription_id,
        delivery.pk,
    )
    assert pump_for(replay.pk) == "delivered"
    delivery.event.refresh_from_db()
    assert delivery.event.status == "delivered"
    # The replay went out with the same webhook-id: a receiver that already has it may dedup.
    first, second = subscriber.received("/hook")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    # Once that replay is done, replaying (even the replay) makes a new one of the original.
    again = delivery_replay(delivery_id=replay.pk)
    assert again.pk != replay.pk and again.replay_of_id == delivery.pk


@pytest.mark.django_db
def test_send_test_reaches_only_that_subscription_once(subscriber):
    sub = SubscriptionFactory(url=subscriber.url("/ping"))
    SubscriptionFactory(url=subscriber.url("/other"), message_types=["*"])
    delivery = subscription_send_test(subscription_id=sub.pk)
    assert subscription_send_test(subscription_id=sub.pk).pk == delivery.pk
    assert Delivery.objects.filter(event=delivery.event).count() == 1
    assert delivery.event.message == TEST_MESSAGE and delivery.event.store_id is None
    assert pump_for(delivery.pk) == "delivered"
    assert subscriber.received("/ping")[0].json()["message"] == TEST_MESSAGE
    assert subscriber.received("/other") == []
    assert subscription_send_test(subscription_id=sub.pk).pk != delivery.pk
    assert Event.objects.filter(message=TEST_MESSAGE).count() == 2


@pytest.mark.django_db
def test_send_test_is_not_retried(subscriber):
    subscriber.program("/ping", Reply.error(500))
    sub = SubscriptionFactory(url=subscriber.url("/ping"), retry_schedule=[0, 0])
    delivery = subscription_send_test(subscription_id=sub.pk)
    assert pump_for(delivery.pk) == "failed"
