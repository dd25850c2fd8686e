"""A slow or dead endpoint never starves the others: at most `max_in_flight` of its deliveries
are on the wire at once (a worker sends a batch one request at a time, so a batch is one), each
cut off at its timeout; the rest wait without spending attempts."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from routing.models import Attempt, Delivery
from tests.conftest import deliveries_settle
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import pump_for, wait_until
from tests.reliability.conftest import push


def unordered_delivery(sub, n: int) -> Delivery:
    return DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n}, resource_key=None))


@pytest.mark.django_db
def test_a_full_endpoint_leaves_the_delivery_waiting_without_an_attempt(subscriber, settings):
    settings.HUB_SUBSCRIPTION_MAX_IN_FLIGHT = 5
    sub = SubscriptionFactory(url=subscriber.url("/slow"), max_in_flight=1)
    on_the_wire = unordered_delivery(sub, 1)
    waiting = unordered_delivery(sub, 2)
    Delivery.objects.filter(pk=on_the_wire.pk).update(
        state="delivering", attempt_count=1, lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    assert pump_for(waiting.pk) is None
    waiting.refresh_from_db()
    assert (waiting.state, waiting.attempt_count) == ("pending", 0)
    assert subscriber.received("/slow") == []

    # A slot freed (the worker holding it goes on with whatever is due, this one included).
    Delivery.objects.filter(pk=on_the_wire.pk).update(state="delivered", lease_expires_at=None)
    assert pump_for(waiting.pk) == "delivered"


@pytest.mark.django_db
def test_a_delivery_whose_worker_died_does_not_hold_a_slot(subscriber):
    sub = SubscriptionFactory(url=subscriber.url("/slow"), max_in_flight=1)
    abandoned, next_one = unordered_delivery(sub, 1), unordered_delivery(sub, 2)
    Delivery.objects.filter(pk=abandoned.pk).update(
        state="delivering", attempt_count=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert pump_for(next_one.pk) == "delivered"


@pytest.mark.django_db
def test_the_hub_default_applies_and_zero_means_no_limit(subscriber, settings):
    settings.HUB_SUBSCRIPTION_MAX_IN_FLIGHT = 1
    limited = SubscriptionFactory(url=subscriber.url("/a"))
    unlimited = SubscriptionFactory(url=subscriber.url("/b"), max_in_flight=0)
    for sub in (limited, unlimited):
        busy = unordered_delivery(sub, 1)
        Delivery.objects.filter(pk=busy.pk).update(
            state="delivering", attempt_count=1, lease_expires_at=timezone.now() + timedelta(minutes=1)
        )
    assert pump_for(unordered_delivery(limited, 2).pk) is None
    assert pump_for(unordered_delivery(unlimited, 2).pk) == "delivered"


@pytest.mark.django_db
def test_a_batch_being_sent_holds_one_slot_whatever_its_size(subscriber):
    sub = SubscriptionFactory(url=subscriber.url("/batched"), max_in_flight=2)
    lease = timezone.now() + timedelta(minutes=1)
    batch = [unordered_delivery(sub, n) for n in range(3)]
    Delivery.objects.filter(pk__in=[d.pk for d in batch]).update(
        state="delivering", attempt_count=1, lease_expires_at=lease, claim=7
    )
    assert pump_for(unordered_delivery(sub, 3).pk) == "delivered"  # 1 of 2 taken
    other_batch = unordered_delivery(sub, 4)
    Delivery.objects.filter(pk=other_batch.pk).update(
        state="delivering", attempt_count=1, lease_expires_at=lease, claim=8
    )
    waiting = unordered_delivery(sub, 5)
    assert pump_for(waiting.pk) is None  # 2 of 2
    assert len(subscriber.received("/batched")) == 1


class DeadEndpoint:
    """Accepts connections and never answers: the worst endpoint, one that costs a full timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/dead"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.django_db(transaction=True)
def test_a_dead_endpoint_never_starves_the_others(hub_worker, subscriber, api, delivered):
    """Worker concurrency 4; the dead endpoint may hold one slot. Its events are pushed first, so
    without the limit they would fill the pool for `timeout` seconds each, again and again."""
    dead = DeadEndpoint()
    try:
        slow = SubscriptionFactory(
            url=dead.url, message_types=["stock:*"], timeout_seconds=1, max_in_flight=1, retry_schedule=[0.5] * 20
        )
        fast = SubscriptionFactory(url=subscriber.url("/fast"), message_types=["price:*"])
        push(api, [{"message": "stock:change", "payload": {"sku": f"S{n}"}} for n in range(12)])
        push(api, [{"message": "price:change", "payload": {"sku": f"P{n}"}} for n in range(30)])
        delivered(30, timeout=90, subscription=fast)
        assert len(subscriber.received("/fast")) == 30
        # The dead endpoint got its attempts, each cut at its timeout, never two at once.
        assert Delivery.objects.filter(subscription=slow, state="delivered").count() == 0

        def dead_attempts() -> list[tuple]:
            return list(
                Attempt.objects.filter(delivery__subscription=slow)
                .exclude(request_method="")
                .order_by("started_at")
                .values_list("started_at", "latency_ms", "error")
            )

        attempts = wait_until(lambda: len(dead_attempts()) >= 3 and dead_attempts(), 30, message="dead attempts")
        assert all("timed out" in error for _, _, error in attempts)
        for (start, latency, _), (next_start, _, _) in zip(attempts, attempts[1:], strict=False):
            assert start + timedelta(milliseconds=latency) <= next_start
    finally:
        deliveries_settle()
        dead.close()
