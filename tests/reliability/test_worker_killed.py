"""A worker SIGKILLed mid-delivery loses nothing: the delivery is sent again with the same webhook-id
and recorded once. Leases are short and renewed, so a dead worker stalls only what it had on the
wire, and a live one's attempt is never taken back however long it lasts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrator.celery import app
from routing.leases import LEASE_EXPIRED_ERROR
from routing.models import Delivery
from routing.wakeup import PUMP_TASK
from tests.conftest import TEST_QUEUE, deliveries_settle
from tests.factories import DeliveryFactory, SubscriptionFactory
from tests.live import Received, Reply, Worker, queue_purge, wait_until, workers_paused
from tests.reliability.conftest import push, worker_new

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_killed_during_a_slow_delivery_delivers_it_again_once(hub_worker, subscriber, api, delivered):
    sub = SubscriptionFactory(url=subscriber.url("/slow"), message_types=["order:*"], timeout_seconds=3)
    subscriber.program("/slow", Reply.slow(2), Reply.ok())
    [event] = push(api, {"message": "order:new", "payload": {"order": {"number": "R100"}}})
    delivery = Delivery.objects.get(event=event, subscription=sub)

    subscriber.wait_for("/slow", 1, timeout=60)
    delivery.refresh_from_db()
    assert delivery.state == "delivering"  # the worker is inside the HTTP exchange right now
    hub_worker.kill()
    try:
        # Nobody is left to finish it: it stays claimed until its lease runs out.
        delivery.refresh_from_db()
        assert (delivery.state, delivery.attempt_count) == ("delivering", 1)
    finally:
        hub_worker.start()  # what a supervisor does

    delivered(1, timeout=60, pk=delivery.pk)
    try:
        first, second = subscriber.wait_for("/slow", 2, timeout=60)
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(event.uid)
        delivery.refresh_from_db()
        attempts = list(delivery.attempts.order_by("number"))
        assert [(a.number, a.succeeded) for a in attempts] == [(1, False), (2, True)]
        assert "lease expired" in attempts[0].error
        assert not Delivery.objects.filter(state="delivering").exists()
        event.refresh_from_db()
        wait_until(lambda: (event.refresh_from_db(), event.status)[1] == "delivered", 10)
        assert len(subscriber.received("/slow")) == 2
    finally:
        deliveries_settle()


# A worker of the tests' own: leases of LEASE seconds (renewed every quarter of it), a sweeper
# every second. HELD outlasts both by far; the endpoint's timeout makes the longest a batch may
# hold its claim (the pump's 5 s, the timeout, a 1 s margin) far longer still.
LEASE = 2.0
HELD = 30.0
TIMEOUT = 40
HOLD_LIMIT = 5 + TIMEOUT + 1


def short_lease_worker(name: str, **env: str) -> Worker:
    return worker_new(name, concurrency=2, HUB_LEASE_SECONDS=str(LEASE), **env).start()


def lease_left(delivery: Delivery) -> float:
    delivery.refresh_from_db()
    assert delivery.state == "delivering" and delivery.lease_expires_at is not None
    return (delivery.lease_expires_at - timezone.now()).total_seconds()


def renewed(delivery: Delivery) -> bool:
    """The lease was extended after the claim (which stamped updated_at) by more than it gave."""
    delivery.refresh_from_db()
    if delivery.lease_expires_at is None:
        return False
    return (delivery.lease_expires_at - delivery.updated_at).total_seconds() > LEASE * 1.01


def test_a_killed_worker_holding_both_slots_stalls_only_its_own_deliveries(subscriber, api, delivered):
    """Both in-flight slots of an endpoint are taken by a worker's two batches, each on the wire
    to a subscriber that holds the request; the worker is SIGKILLed. Another order's event pushed
    then is delivered by a live worker once the dead one's short leases run out, long before the
    batches could have held their claims; the held deliveries go again with their webhook-id."""
    first_seen: set[str] = set()

    def hold_first(request: Received) -> Reply:
        number = request.json()["payload"]["order"]["number"]
        if number in ("A", "B") and number not in first_seen:
            first_seen.add(number)
            return Reply.slow(HELD)
        return Reply.ok()

    subscriber.respond_with("/held", hold_first)
    sub = SubscriptionFactory(
        url=subscriber.url("/held"), message_types=["order:*"], timeout_seconds=TIMEOUT, max_in_flight=2
    )
    with workers_paused():
        victim = short_lease_worker("victim")
        rescuer = None
        try:
            [a] = push(api, {"message": "order:new", "payload": {"order": {"number": "A"}}})
            subscriber.wait_for("/held", 1, timeout=30)
            [b] = push(api, {"message": "order:new", "payload": {"order": {"number": "B"}}})
            subscriber.wait_for("/held", 2, timeout=30)
            held = [Delivery.objects.get(event=e, subscription=sub) for e in (a, b)]
            # Two batches, one slot each; their leases are short, and renewed while they wait.
            for delivery in held:
                delivery.refresh_from_db()
            assert held[0].claim != held[1].claim and None not in (held[0].claim, held[1].claim)
            for delivery in held:
                wait_until(lambda d=delivery: renewed(d), LEASE * 10, message="a lease renewed")
                assert lease_left(delivery) <= LEASE * 1.5
            rescuer = short_lease_worker("rescuer")
            victim.kill()

            [c] = push(api, {"message": "order:new", "payload": {"order": {"number": "C"}}})
            other = Delivery.objects.get(event=c, subscription=sub)
            # Half the time the dead worker's batches could have held their claims.
            delivered(1, timeout=HOLD_LIMIT / 2, pk=other.pk)
            for delivery in held:
                delivered(1, timeout=HOLD_LIMIT / 2, pk=delivery.pk)
                attempts = list(delivery.attempts.order_by("number"))
                assert [(x.number, x.succeeded) for x in attempts] == [(1, False), (2, True)]
                assert "lease expired" in attempts[0].error
            by_order: dict[str, list[str]] = {}
            for request in subscriber.received("/held"):
                by_order.setdefault(request.json()["payload"]["order"]["number"], []).append(
                    request.headers["webhook-id"]
                )
            assert by_order == {"A": [str(a.uid)] * 2, "B": [str(b.uid)] * 2, "C": [str(c.uid)]}
        finally:
            deliveries_settle()
            victim.kill()
            if rescuer is not None:
                rescuer.stop()


def test_an_attempt_longer_than_the_lease_is_never_sent_twice(subscriber, api, delivered):
    """The endpoint answers after three leases (its timeout is longer still): the lease stays
    short all along, renewed by the worker's heartbeat, so the sweeper (every second) never takes
    the delivery back; one request, one attempt, delivered."""
    subscriber.program("/long", Reply.slow(LEASE * 3), Reply.ok())
    sub = SubscriptionFactory(url=subscriber.url("/long"), message_types=["order:*"], timeout_seconds=TIMEOUT)
    with workers_paused():
        worker = short_lease_worker("long")
        try:
            [event] = push(api, {"message": "order:new", "payload": {"order": {"number": "L1"}}})
            delivery = Delivery.objects.get(event=event, subscription=sub)
            subscriber.wait_for("/long", 1, timeout=30)
            # Renewed while the endpoint still holds the request (it answers after three leases).
            wait_until(lambda: renewed(delivery), LEASE * 10, message="the lease renewed")
            assert lease_left(delivery) <= LEASE * 1.5
            delivered(1, timeout=60, pk=delivery.pk)
            delivery.refresh_from_db()
            assert delivery.attempt_count == 1
            [attempt] = delivery.attempts.all()
            assert attempt.succeeded and attempt.latency_ms >= LEASE * 3 * 1000
            assert len(subscriber.received("/long")) == 1
        finally:
            deliveries_settle()
            worker.stop()


def test_a_dead_workers_delivery_is_taken_back_while_every_worker_is_busy(subscriber):
    """The only worker process is busy with a backlog (pumps to endpoints that take a second an
    answer, a minute of work queued before the sweeps) when a delivery is found as a dead worker
    leaves it: claimed, its lease run out. Beat's sweeper still takes it back within seconds:
    a sweep sent as a task waited behind the queued pumps, and expired there."""
    subscriber.respond_with("/backlog", lambda _request: Reply.slow(1))
    busy = SubscriptionFactory.create_batch(6, url=subscriber.url("/backlog"), timeout_seconds=10)
    for sub in busy:
        DeliveryFactory.create_batch(10, subscription=sub)
    dead = DeliveryFactory(
        subscription=SubscriptionFactory(url=subscriber.url("/ok")),
        state="delivering",
        claim=7,
        lease_expires_at=timezone.now() - timedelta(seconds=10),
    )
    with workers_paused():
        queue_purge(TEST_QUEUE)
        for sub in busy * 3:
            app.send_task(PUMP_TASK, args=[sub.pk])
        worker = worker_new("busy", pool="prefork", concurrency=1).start()
        try:
            wait_until(lambda: Delivery.objects.filter(subscription__in=busy, state="delivered").exists(), 30)
            wait_until(
                lambda: Delivery.objects.get(pk=dead.pk).state != "delivering",
                20,
                message="the dead worker's delivery taken back",
            )
            # Taken back by the sweeper while the backlog was still being sent, not after it.
            assert Delivery.objects.filter(subscription__in=busy, state="pending").count() > 20
            dead.refresh_from_db()
            # Charged its unanswered attempt; as new work it may already have gone again, ahead of
            # the backlog (the backlog lane), and then been delivered at the next attempt.
            attempts = [(a.error, a.succeeded) for a in dead.attempts.all()]
            assert attempts[0] == (LEASE_EXPIRED_ERROR, False)
            assert attempts[1:] in ([], [("", True)]), attempts
        finally:
            worker.stop()
            queue_purge(TEST_QUEUE)
            # No worker runs now: whatever is left, the dead one's row too, is owed to nobody.
            Delivery.objects.exclude(state__in=["delivered", "failed"]).update(state="cancelled")
