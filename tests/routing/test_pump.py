"""Batched sending (routing.pump) against the real local subscriber, called directly (no broker):
one claim for a batch, every attempt and outcome recorded, the time budget handing back what was
not sent, and what a batch of mixed answers leaves behind."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from routing.leases import LEASE_EXPIRED_ERROR
from routing.models import Attempt, Delivery
from routing.pump import PumpResult, deliveries_pump, turn_seconds
from routing.sweeper import deliveries_sweep
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply

pytestmark = pytest.mark.django_db


def backlog(sub, count: int) -> list[Delivery]:
    return [
        DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n}, resource_key=None)) for n in range(count)
    ]


def test_a_backlog_goes_in_batches_each_attempt_recorded_in_claim_order(subscriber, settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 4
    sub = SubscriptionFactory(url=subscriber.url("/erp"), max_in_flight=1)
    deliveries = backlog(sub, 10)
    result = deliveries_pump(subscription_id=sub.pk)
    assert result.verdicts == {d.pk: "delivered" for d in deliveries}
    assert not result.handed_on
    assert [r.json()["payload"]["n"] for r in subscriber.received("/erp")] == list(range(10))
    rows = Delivery.objects.filter(subscription=sub)
    assert set(rows.values_list("state", "attempt_count", "claim", "lease_expires_at")) == {
        ("delivered", 1, None, None)
    }
    assert Attempt.objects.filter(delivery__subscription=sub, number=1, succeeded=True, status_code=200).count() == 10
    for delivery in deliveries:
        delivery.event.refresh_from_db()
        assert delivery.event.status == "delivered"


def test_mixed_answers_in_one_batch_each_get_their_own_outcome(subscriber, settings):
    settings.HUB_RETRY_JITTER = 0
    sub = SubscriptionFactory(url=subscriber.url("/mixed"), retry_schedule=[600])
    subscriber.program("/mixed", Reply.ok(), Reply.error(500), Reply.ok(), Reply.error(400))
    first, second, third, fourth = backlog(sub, 4)
    second.event.origin = "test:subscription:1"  # an admin's test send is never retried
    second.event.save(update_fields=["origin"])
    result = deliveries_pump(subscription_id=sub.pk)
    assert result.verdicts == {first.pk: "delivered", second.pk: "failed", third.pk: "delivered", fourth.pk: "retry"}
    states = dict(Delivery.objects.filter(subscription=sub).values_list("pk", "state"))
    assert states == {first.pk: "delivered", second.pk: "failed", third.pk: "delivered", fourth.pk: "retrying"}
    assert Delivery.objects.get(pk=fourth.pk).last_status_code == 400
    # The batch's last answer was a failure: the endpoint is failing since then.
    sub.refresh_from_db()
    assert sub.failing_since is not None
    fourth.event.refresh_from_db()
    assert fourth.event.status == "delivering"  # a retry is still owed


def test_what_the_time_budget_leaves_unsent_goes_back_as_it_was_and_is_handed_on(subscriber, settings):
    settings.HUB_DELIVERY_PUMP_SECONDS = 0  # spent at once: the first of the batch only
    sub = SubscriptionFactory(url=subscriber.url("/budget"))
    first, *rest = backlog(sub, 3)
    retried = rest[-1]
    Delivery.objects.filter(pk=retried.pk).update(state="retrying", attempt_count=2)
    result = deliveries_pump(subscription_id=sub.pk)
    assert result.verdicts == {first.pk: "delivered"}
    assert result.handed_on  # a fresh message carries on with this endpoint
    assert len(subscriber.received("/budget")) == 1
    back = {
        d.pk: (d.state, d.attempt_count, d.claim, d.lease_expires_at)
        for d in Delivery.objects.filter(pk__in=[d.pk for d in rest])
    }
    assert back == {rest[0].pk: ("pending", 0, None, None), retried.pk: ("retrying", 2, None, None)}
    assert not Attempt.objects.filter(delivery__in=rest).exists()
    rest[0].event.refresh_from_db()
    assert rest[0].event.status == "queued"  # nothing of it has started


@pytest.mark.django_db(transaction=True)
def test_an_outcome_counts_only_while_the_batch_still_holds_its_delivery(subscriber, settings):
    """The first delivery's lease is taken back while its request is on the wire (as the sweeper
    does once a lease runs out): its attempt is recorded, its new state stands; the rest of the
    batch is recorded as usual."""
    settings.HUB_DELIVERY_PUMP_SECONDS = 5  # time for both requests
    subscriber.program("/fence", Reply.slow(1.0), Reply.ok())
    sub = SubscriptionFactory(url=subscriber.url("/fence"))
    taken, kept = backlog(sub, 2)
    outcome: list[PumpResult] = []

    def pump() -> None:
        try:
            outcome.append(deliveries_pump(subscription_id=sub.pk))
        finally:
            connection.close()

    thread = threading.Thread(target=pump)
    thread.start()
    subscriber.wait_for("/fence", 1)
    later = timezone.now() + timedelta(hours=1)  # out of every worker's way from now on
    Delivery.objects.filter(pk=taken.pk).update(
        state="retrying", claim=None, lease_expires_at=None, next_attempt_at=later
    )
    # As the sweeper charges a delivery it takes back: the attempt on the wire, unanswered.
    Attempt.objects.create(delivery=taken, number=1, request_url=sub.url, error=LEASE_EXPIRED_ERROR)
    thread.join(timeout=30)
    assert outcome and outcome[0].verdicts == {kept.pk: "delivered"}
    assert Delivery.objects.get(pk=taken.pk).state == "retrying"
    assert Delivery.objects.get(pk=kept.pk).state == "delivered"
    assert Attempt.objects.filter(delivery__in=[taken, kept], succeeded=True).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_stale_claim_records_its_attempt_over_the_sweepers_without_a_collision(
    subscriber, unconsumed_queue, settings
):
    """The sweeper reclaims a delivery whose lease ran out while its request is on the wire, and
    records that attempt number as unanswered; the stale batch then records the answer it got: the
    answer replaces the sweeper's guess without a collision on (delivery, number), the sweeper's
    outcome stands, and the rest of the batch counts."""
    settings.HUB_DELIVERY_PUMP_SECONDS = 5  # time for both requests
    subscriber.program("/stale", Reply.slow(1.0), Reply.ok())
    sub = SubscriptionFactory(url=subscriber.url("/stale"))
    taken, kept = backlog(sub, 2)
    outcome: list[PumpResult] = []
    errors: list[BaseException] = []

    def pump() -> None:
        try:
            outcome.append(deliveries_pump(subscription_id=sub.pk))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=pump)
    thread.start()
    subscriber.wait_for("/stale", 1)
    # The lease runs out (as a stalled recording or a clock jump would make it) and the sweeper runs.
    Delivery.objects.filter(pk=taken.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert deliveries_sweep().reclaimed == 1
    assert "lease expired" in Attempt.objects.get(delivery=taken, number=1).error
    # Out of this pump's next claim: what it left behind is all this test looks at.
    Delivery.objects.filter(pk=taken.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1))
    thread.join(timeout=30)
    assert not errors, errors
    assert outcome and outcome[0].verdicts == {kept.pk: "delivered"}
    attempt = Attempt.objects.get(delivery=taken, number=1)
    assert (attempt.succeeded, attempt.status_code, attempt.request_method) == (True, 200, "POST")
    taken.refresh_from_db()
    assert (taken.state, taken.attempt_count, taken.claim) == ("retrying", 1, None)
    assert Delivery.objects.get(pk=kept.pk).state == "delivered"


@pytest.mark.parametrize(("max_in_flight", "backlog_size", "helpers"), [(3, 10, 2), (1, 10, 0), (3, 3, 0)])
def test_a_full_batch_wakes_another_pump_of_the_endpoint(
    subscriber, settings, monkeypatch, max_in_flight, backlog_size, helpers
):
    """A backlog is sent by up to max_in_flight pumps, not by the one its coalesced message woke."""
    settings.HUB_DELIVERY_BATCH_SIZE = 4
    woken: list[list[int]] = []
    monkeypatch.setattr("routing.pump.pumps_enqueue", lambda ids, **kw: woken.append(list(ids)) or list(ids))
    sub = SubscriptionFactory(url=subscriber.url("/backlog"), max_in_flight=max_in_flight)
    deliveries = backlog(sub, backlog_size)

    result = deliveries_pump(subscription_id=sub.pk)

    # 10 due in batches of 4: the first two batches are full, each asks for a helper; the last
    # (2) is not. Three due fit one batch that is not full. A limit of 1 leaves no room for one.
    assert result.helpers == helpers
    assert woken == [[sub.pk]] * helpers
    assert result.verdicts == {d.pk: "delivered" for d in deliveries}


@pytest.mark.parametrize("max_in_flight", [2, 0])
def test_a_claim_brings_its_deliveries_events_and_stores_in_its_own_statement(settings, max_in_flight):
    from django.test.utils import CaptureQueriesContext

    from routing.claim import batch_claim

    sub = SubscriptionFactory(max_in_flight=max_in_flight)
    big = {"order": {"number": "R9", "id": 2**70, "total": "9.90"}}
    pushed = DeliveryFactory(subscription=sub, event=EventFactory(payload=big, resource_key=None))
    reply = DeliveryFactory(subscription=sub, event=EventFactory(store=None, resource_key=None))
    with CaptureQueriesContext(connection) as queries:
        batch = batch_claim(sub=sub, budget=5)
        # Everything a send reads is loaded: the event, its payload parsed, the store (or none).
        assert [d.pk for d in batch.deliveries] == [pushed.pk, reply.pk]
        first, second = batch.deliveries
        assert first.event.payload == big and first.event.payload["order"]["id"] == 2**70
        assert first.event.store.name == pushed.event.store.name
        assert second.event.store is None
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    # PostgreSQL: the endpoint's lock when it has a limit, then the claim, with the rows; SQLite
    # reads them after it.
    expected = (2 if max_in_flight else 1) if connection.vendor == "postgresql" else 2
    assert len([s for s in statements if s not in ("BEGIN", "COMMIT")]) == expected
    # The rows as the claim left them, the same as read back.
    for delivery in batch.deliveries:
        stored = Delivery.objects.get(pk=delivery.pk)
        assert (delivery.state, delivery.attempt_count, delivery.claim) == ("delivering", 1, batch.claim)
        assert (stored.state, stored.attempt_count, stored.claim, stored.lease_expires_at) == (
            delivery.state,
            delivery.attempt_count,
            delivery.claim,
            delivery.lease_expires_at,
        )
        assert delivery.event == stored.event and delivery.event.uid == stored.event.uid


def _values(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


@pytest.mark.parametrize("with_store", [True, False])
def test_the_pump_reads_its_endpoint_as_the_orm_does(with_store):
    from routing.claim import subscription_read
    from routing.models import Subscription
    from tests.factories import StoreFactory

    sub = SubscriptionFactory(
        store=StoreFactory() if with_store else None,
        parameters=[{"name": "erp_key", "value": "k-1"}],
        previous_signing_secret="whsec_b2xkc2VjcmV0b2xkc2VjcmV0",
        previous_signing_secret_expires_at=timezone.now() + timedelta(hours=1),
    )
    orm = Subscription.objects.select_related("store").get(pk=sub.pk)
    read = subscription_read(sub.pk)
    # Every column the same: secrets decrypted, JSON parsed, datetimes aware.
    assert _values(read) == _values(orm)
    assert read.signing_secret == sub.signing_secret and read.signing_secret.startswith("whsec_")
    assert read.parameters == [{"name": "erp_key", "value": "k-1"}]
    if with_store:
        assert _values(read.store) == _values(orm.store)
    else:
        assert read.store is None
    assert subscription_read(sub.pk + 1000) is None


def test_claimed_rows_are_the_orms_rows():
    from routing.claim import batch_claim

    sub = SubscriptionFactory()
    delivery = DeliveryFactory(subscription=sub, event=EventFactory(resource_key=None))
    (claimed,) = batch_claim(sub=sub, budget=5).deliveries
    orm = Delivery.objects.select_related("event", "event__store").get(pk=delivery.pk)
    assert _values(claimed) == _values(orm)
    assert _values(claimed.event) == _values(orm.event)
    assert _values(claimed.event.store) == _values(orm.event.store)


@pytest.mark.parametrize("max_in_flight", [2, 0])
def test_a_batch_sends_the_parameters_stored_when_it_was_claimed_not_its_pumps_first_read(max_in_flight):
    """Two pumps of one endpoint: the other's reply merged a parameter after this pump read the
    endpoint; the batch this pump claims next carries it."""
    from routing.claim import batch_claim, subscription_read

    sub = SubscriptionFactory(max_in_flight=max_in_flight, parameters=[{"name": "store_id", "value": "42"}])
    read_at_start = subscription_read(sub.pk)
    merged = [{"name": "store_id", "value": "42"}, {"name": "since", "value": "2026-12-02"}]
    stored = type(sub).objects.get(pk=sub.pk)
    stored.parameters = merged
    stored.save(update_fields=["parameters"])
    DeliveryFactory(subscription=sub)

    batch = batch_claim(sub=read_at_start, budget=5)

    assert batch is not None and batch.subscription.parameters == merged


def test_a_sent_and_recorded_batch_reads_no_column_its_claim_left_out(subscriber):
    """The claim reads back only what the send, the record and the outcome log use: the rest stays
    deferred through all of them (reading one would cost a query per delivery), and a batch's
    events of one store share one Store."""
    import logging

    from routing.claim import batch_claim, subscription_read
    from routing.pump import _batch_close, logger
    from routing.send import batch_send
    from tests.factories import StoreFactory

    sub = SubscriptionFactory(url=subscriber.url("/deferred"), max_in_flight=0)
    store = StoreFactory()
    for n in range(3):
        DeliveryFactory(subscription=sub, event=EventFactory(store=store, payload={"n": n}, resource_key=None))
    batch = batch_claim(sub=subscription_read(sub.pk), budget=5)
    rows = [(d, d.event, d.event.store) for d in batch.deliveries]
    deferred = [tuple(instance.get_deferred_fields() for instance in row) for row in rows]
    assert all(all(fields) for fields in deferred), deferred
    assert len({id(s) for _, _, s in rows}) == 1
    assert all(not d._state.adding and d._state.db == "default" for d, _, _ in rows)

    previous = logger.level
    logger.setLevel(logging.INFO)  # the outcome lines are built too
    try:
        sent, unsent = batch_send(batch, deadline=float("inf"))
        verdicts = _batch_close(batch, sent=sent, unsent=unsent)
    finally:
        logger.setLevel(previous)
    assert set(verdicts.values()) == {"delivered"}
    assert [tuple(instance.get_deferred_fields() for instance in row) for row in rows] == deferred


def test_a_claimed_row_is_made_as_the_orm_makes_it_for_a_post_init_receiver():
    """Claimed rows skip Model.__init__ only while nothing listens to it: a post_init receiver
    connected is given each claimed instance, as the ORM's read gives it."""
    from django.db.models.signals import post_init

    from routing.claim import batch_claim

    sub = SubscriptionFactory()
    delivery = DeliveryFactory(subscription=sub, event=EventFactory(resource_key=None))
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append((sender, instance))

    post_init.connect(receiver, sender=Delivery)
    try:
        (claimed,) = batch_claim(sub=sub, budget=5).deliveries
    finally:
        post_init.disconnect(receiver, sender=Delivery)
    assert [(Delivery, claimed)] == [(s, i) for s, i in seen if i is claimed]
    assert claimed.pk == delivery.pk and not claimed._state.adding


@pytest.mark.django_db(transaction=False)
def test_turns_are_scattered_around_their_length_so_busy_processes_come_free_apart(settings):
    """Turns of one length kept every busy pool process's turns ending together: new work waited
    for that moment (bench/chaos.py --scenario neighbour, docs/reliability.md)."""
    settings.HUB_DELIVERY_PUMP_SECONDS = 2.0
    settings.HUB_DELIVERY_PUMP_JITTER = 0.5
    turns = [turn_seconds() for _ in range(400)]
    assert 1.0 <= min(turns) < 1.4 and 2.6 < max(turns) <= 3.0
    settings.HUB_DELIVERY_PUMP_JITTER = 0
    assert {turn_seconds() for _ in range(20)} == {2.0}
