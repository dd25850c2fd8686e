"""The sweeper takes back a dead worker's claims: a batch of one is charged the attempt it had on
the wire, a batch of several goes back unsent with no attempt spent, each of its deliveries then
sent alone; a delivery that kills its worker every time still ends up failed after its budget."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from routing import send
from routing.claim import batch_claim, subscription_read
from routing.leases import LEASE_EXPIRED_ERROR
from routing.models import Attempt, Delivery
from routing.pump import deliveries_pump
from routing.record import outcomes_record
from routing.send import Sent
from routing.sweeper import deliveries_sweep
from routing.transport.exchange import ExchangeResult
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


class WorkerDied(BaseException):
    """What a SIGKILL looks like from inside the pump: nothing after it runs."""


def order_chain(sub, count: int, *, order: str = "R1") -> list[Delivery]:
    return [
        DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n}, resource_key=f"order:{order}"))
        for n in range(count)
    ]


def leases_expire() -> None:
    Delivery.objects.filter(state="delivering").update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def claimed(sub) -> list[int]:
    batch = batch_claim(sub=subscription_read(sub.pk), budget=5)
    return [] if batch is None else [d.pk for d in batch.deliveries]


@pytest.fixture(autouse=True)
def _no_wakeups(monkeypatch) -> list[list[int]]:
    woken: list[list[int]] = []
    monkeypatch.setattr("routing.sweeper.pumps_enqueue", lambda ids, **kw: woken.append(list(ids)) or list(ids))
    return woken


def test_a_dead_batch_of_several_goes_back_unsent_and_a_dead_batch_of_one_is_charged(settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 10
    sub = SubscriptionFactory(max_in_flight=0)
    run = order_chain(sub, 3)
    other = SubscriptionFactory(max_in_flight=0)
    [lone] = order_chain(other, 1, order="R2")
    assert claimed(sub) == [d.pk for d in run]
    assert claimed(other) == [lone.pk]
    leases_expire()

    result = deliveries_sweep()

    assert result.reclaimed == 4
    back = Delivery.objects.filter(pk__in=[d.pk for d in run])
    assert set(back.values_list("state", "attempt_count", "claim", "lease_expires_at", "send_alone")) == {
        ("pending", 0, None, None, True)
    }
    assert not Attempt.objects.filter(delivery__in=run).exists()
    lone.refresh_from_db()
    assert (lone.state, lone.attempt_count, lone.claim, lone.send_alone) == ("retrying", 1, None, True)
    assert list(Attempt.objects.filter(delivery=lone).values_list("number", "error")) == [(1, LEASE_EXPIRED_ERROR)]
    assert result.unsent == 3
    # Each of the dead run goes next in a batch of its own, in the order's order.
    assert claimed(sub) == [run[0].pk]
    assert claimed(sub) == []  # the order's turn is on the wire
    Delivery.objects.filter(pk=run[0].pk).update(state="delivered", claim=None, send_alone=False)
    assert claimed(sub) == [run[1].pk]


def crashed_before(*deliveries: Delivery) -> None:
    """As if each one's previous attempt had also ended with its worker's death."""
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(last_error=LEASE_EXPIRED_ERROR)


def test_a_first_crash_is_retried_at_once_and_a_repeated_one_by_the_endpoints_schedule(settings):
    """A first crash is taken as the worker's (a deploy, the OOM killer), so the held delivery goes
    again at once; one whose previous attempt also crashed waits as any failed attempt does (the
    endpoint's own schedule, else the hub's). Due at once every time, a delivery that kills its
    worker would take down a worker each sweep until its budget ran out."""
    settings.HUB_RETRY_JITTER = 0
    settings.HUB_RETRY_SCHEDULE = [30, 90]
    own = SubscriptionFactory(max_in_flight=0, retry_schedule=[120, 600])
    hubs = SubscriptionFactory(max_in_flight=0, retry_schedule=None)
    first = SubscriptionFactory(max_in_flight=0, retry_schedule=[120, 600])
    [mine] = order_chain(own, 1, order="A")
    [theirs] = order_chain(hubs, 1, order="B")
    [fresh] = order_chain(first, 1, order="C")
    assert claimed(own) == [mine.pk] and claimed(hubs) == [theirs.pk] and claimed(first) == [fresh.pk]
    crashed_before(mine, theirs)
    leases_expire()
    now = timezone.now()

    assert deliveries_sweep(now=now).reclaimed == 3

    for delivery, delay in ((mine, 120), (theirs, 30), (fresh, 0)):
        delivery.refresh_from_db()
        assert (delivery.state, delivery.attempt_count, delivery.send_alone) == ("retrying", 1, True)
        assert delivery.next_attempt_at == now + timedelta(seconds=delay)
    assert claimed(own) == [] and claimed(hubs) == []
    assert claimed(first) == [fresh.pk]


def test_charged_retries_are_jittered_within_the_hubs_bounds(settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 1
    settings.HUB_RETRY_JITTER = 0.2
    subs = [SubscriptionFactory(max_in_flight=0, retry_schedule=[100]) for _ in range(6)]
    for n, sub in enumerate(subs):
        order_chain(sub, 1, order=f"J{n}")
        assert len(claimed(sub)) == 1
    crashed_before(*Delivery.objects.all())
    leases_expire()
    now = timezone.now()
    deliveries_sweep(now=now)
    delays = [(at - now).total_seconds() for at in Delivery.objects.values_list("next_attempt_at", flat=True)]
    assert len(delays) == 6 and all(80 <= d <= 120 for d in delays)


def test_a_sweep_whose_limit_cuts_a_batch_leaves_that_batch_whole_to_the_next(settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 10
    settings.HUB_SWEEP_BATCH_SIZE = 3
    runs = []
    for order in ("A", "B"):
        sub = SubscriptionFactory(max_in_flight=0)
        runs += order_chain(sub, 2, order=order)
        assert len(claimed(sub)) == 2
    leases_expire()
    assert (deliveries_sweep().reclaimed, deliveries_sweep().reclaimed) == (2, 2)
    assert not Attempt.objects.filter(delivery__in=runs).exists()
    assert set(Delivery.objects.filter(pk__in=[d.pk for d in runs]).values_list("state", "send_alone")) == {
        ("pending", True)
    }


def test_a_batch_before_a_delivery_to_send_alone_goes_without_it(settings):
    """Orders due before the marked one go in a batch as usual; the marked one waits for the next."""
    settings.HUB_DELIVERY_BATCH_SIZE = 10
    sub = SubscriptionFactory(max_in_flight=0)
    first = order_chain(sub, 1, order="A")[0]
    marked = order_chain(sub, 1, order="B")[0]
    after = order_chain(sub, 1, order="C")[0]
    Delivery.objects.filter(pk=marked.pk).update(send_alone=True)
    assert claimed(sub) == [first.pk]
    back = Delivery.objects.get(pk=after.pk)
    assert (back.state, back.attempt_count, back.claim) == ("pending", 0, None)
    assert claimed(sub) == [marked.pk]
    assert claimed(sub) == [after.pk]


def test_a_delivery_that_kills_its_worker_every_time_fails_on_its_own_budget(subscriber, settings, monkeypatch):
    """One order's chain of four; the second kills the worker whenever it is sent. The others are
    delivered with no unanswered attempt charged to them; the second fails after its budget
    (three attempts with a schedule of two retries), every one of them its own."""
    settings.HUB_DELIVERY_BATCH_SIZE = 10
    sub = SubscriptionFactory(url=subscriber.url("/poison"), max_in_flight=0, retry_schedule=[0, 0])
    chain = order_chain(sub, 4)
    poison = chain[1]
    real_send = send.delivery_send

    def send_or_die(delivery, **kwargs):
        if delivery.pk == poison.pk:
            raise WorkerDied
        return real_send(delivery, **kwargs)

    monkeypatch.setattr("routing.send.delivery_send", send_or_die)
    deaths = 0
    for _ in range(12):
        if not Delivery.objects.filter(subscription=sub, state__in=("pending", "retrying")).exists():
            break
        try:
            deliveries_pump(subscription_id=sub.pk)
        except WorkerDied:
            deaths += 1
        leases_expire()
        deliveries_sweep()

    states = dict(Delivery.objects.filter(subscription=sub).values_list("pk", "state"))
    assert states == {d.pk: ("failed" if d == poison else "delivered") for d in chain}
    charged = Attempt.objects.filter(error=LEASE_EXPIRED_ERROR)
    assert list(charged.order_by("number").values_list("delivery_id", "number")) == [
        (poison.pk, 1),
        (poison.pk, 2),
        (poison.pk, 3),
    ]
    # One death in the batch of the whole chain (charged to nobody), three alone.
    assert deaths == 4
    for delivery in chain:
        if delivery != poison:
            assert list(delivery.attempts.values_list("number", "succeeded")) == [(1, True)]
    poison.event.refresh_from_db()
    assert poison.event.status == "failed"
    # The order's later events arrived after the first, in order.
    arrived = [r.json()["payload"]["n"] for r in subscriber.received("/poison")]
    assert arrived[-2:] == [2, 3] and set(arrived[:-2]) == {0}


def test_a_stale_batch_never_writes_the_attempt_number_of_a_delivery_given_back(settings):
    """A worker thought dead records its batch after the sweeper gave the batch back unsent and a
    new claim took its first delivery with the same attempt number: the stale answers are not
    written (only logged), and the new claim's answer is, with no collision on (delivery, number)."""
    settings.HUB_DELIVERY_BATCH_SIZE = 10
    sub = SubscriptionFactory(max_in_flight=0)
    first, second = order_chain(sub, 2)
    stale = batch_claim(sub=subscription_read(sub.pk), budget=5)
    leases_expire()
    deliveries_sweep()
    fresh = batch_claim(sub=subscription_read(sub.pk), budget=5)
    assert [(d.pk, d.attempt_count) for d in fresh.deliveries] == [(first.pk, 1)]

    with transaction.atomic():
        outcomes_record(stale, sent=[answered(d) for d in stale.deliveries], unsent=[], now=timezone.now())
    assert not Attempt.objects.filter(delivery__in=[first, second]).exists()
    with transaction.atomic():
        outcomes_record(fresh, sent=[answered(d) for d in fresh.deliveries], unsent=[], now=timezone.now())
    assert list(Attempt.objects.filter(delivery=first).values_list("number", "succeeded")) == [(1, True)]
    assert Delivery.objects.get(pk=first.pk).state == "delivered"
    assert Delivery.objects.get(pk=second.pk).state == "pending"


def answered(delivery: Delivery) -> Sent:
    result = ExchangeResult(method="POST", url="http://x/", status_code=200, latency_ms=1, succeeded=True)
    return Sent(delivery=delivery, result=result, started_at=timezone.now())
