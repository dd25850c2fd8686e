"""The fan-out (routing.fanout) against the real local subscriber, called directly (no broker): one
event's deliveries to several endpoints claimed by one call and sent at once, each signed as a
pump signs it; what it may not take (an endpoint at its in-flight limit, a delivery held back by an
earlier one of its resource, an endpoint off) left to the endpoints' pumps, which send it in order;
a failing endpoint among them retried as a pump retries it. The wake-up's choice of messages is
in tests/routing/test_dispatch.py; the whole path with a worker in tests/e2e/test_fanout_live.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from events.models import Event
from routing.fanout import deliveries_fan_out, fanout_claim
from routing.leases import renew_interval
from routing.models import Attempt, Delivery, DeliveryState
from routing.pump import deliveries_pump
from routing.sweeper import deliveries_sweep
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply

pytestmark = pytest.mark.django_db


def fan(event: Event, subs: list) -> list[Delivery]:
    return [DeliveryFactory(event=event, subscription=sub) for sub in subs]


def headers_of(request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def test_one_event_to_several_endpoints_is_sent_by_one_call_once_each_and_signed(subscriber):
    subs = [SubscriptionFactory(url=subscriber.url(f"/fan/{n}")) for n in range(4)]
    event = EventFactory(payload={"order": {"number": "R7"}})
    deliveries = fan(event, subs)

    result = deliveries_fan_out(delivery_ids=[d.pk for d in deliveries])

    assert result.verdicts == {d.pk: "delivered" for d in deliveries}
    assert result.left == [] and result.due == []
    for sub in subs:
        [request] = subscriber.received(f"/fan/{sub.url.rsplit('/', 1)[-1]}")
        verified = Webhook(sub.signing_secret).verify(request.body, headers_of(request))
        assert verified["message_id"] == event.message_id
        assert verified["payload"]["order"] == {"number": "R7"}
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    assert set(rows.values_list("state", "attempt_count", "claim", "lease_expires_at")) == {
        ("delivered", 1, None, None)
    }
    assert Attempt.objects.filter(delivery__in=deliveries, number=1, succeeded=True).count() == 4
    event.refresh_from_db()
    assert event.status == "delivered"
    # Sent once: a second look finds nothing of them left.
    assert deliveries_fan_out(delivery_ids=[d.pk for d in deliveries]).verdicts == {}
    assert sum(len(subscriber.received(f"/fan/{n}")) for n in range(4)) == 4


def test_the_claim_gives_each_endpoint_a_claim_of_its_own_under_a_lease(subscriber):
    subs = [SubscriptionFactory(url=subscriber.url(f"/own/{n}")) for n in range(3)]
    deliveries = fan(EventFactory(), subs)
    batches = fanout_claim([d.pk for d in deliveries])
    assert [b.subscription.pk for b in batches] == sorted(s.pk for s in subs)
    assert [[d.pk for d in b.deliveries] for b in batches] == [[d.pk] for d in sorted(deliveries, key=lambda d: d.pk)]
    claimed = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    rows = {d.pk: (d.state, d.claim, d.subscription_id) for d in claimed}
    claims = {b.claim for b in batches}
    assert len(claims) == 3
    assert {state for state, _, _ in rows.values()} == {DeliveryState.DELIVERING}
    assert {claim for _, claim, _ in rows.values()} == claims
    now = timezone.now()
    for batch in batches:
        assert batch.hold_until > now
        leased = Delivery.objects.get(pk=batch.deliveries[0].pk).lease_expires_at
        assert now < leased <= batch.hold_until


def test_the_deliveries_of_one_event_share_its_instance_and_its_payload(subscriber):
    subs = [SubscriptionFactory(url=subscriber.url(f"/share/{n}")) for n in range(5)]
    first = EventFactory(payload={"order": {"number": "R1"}})
    second = EventFactory(payload={"order": {"number": "R2"}})
    # Endpoints interleaved, so that an event's rows are not next to each other in the claim's order.
    deliveries = [*fan(first, subs[0::2]), *fan(second, subs[1::2])]

    batches = fanout_claim([d.pk for d in deliveries])

    claimed = [d for b in batches for d in b.deliveries]
    assert len(claimed) == 5
    by_event: dict[int, list[Delivery]] = {}
    for delivery in claimed:
        by_event.setdefault(delivery.event_id, []).append(delivery)
    for event, numbered in ((first, "R1"), (second, "R2")):
        mine = by_event[event.pk]
        # One instance, so one payload object read and checked once for all its requests.
        assert all(d.event is mine[0].event for d in mine)
        assert mine[0].event.pk == event.pk and mine[0].event.payload == {"order": {"number": numbered}}
        assert mine[0].event.store_id == event.store_id
        assert mine[0].event.uid == event.uid
    assert by_event[first.pk][0].event is not by_event[second.pk][0].event


def test_a_shared_payload_is_sent_whole_to_each_endpoint(subscriber):
    subs = [SubscriptionFactory(url=subscriber.url(f"/whole/{n}")) for n in range(3)]
    event = EventFactory(payload={"order": {"number": "R9", "lines": [{"sku": "a", "qty": 2}]}})
    deliveries = fan(event, subs)

    assert deliveries_fan_out(delivery_ids=[d.pk for d in deliveries]).verdicts == {
        d.pk: "delivered" for d in deliveries
    }
    for sub in subs:
        [request] = subscriber.received(f"/whole/{sub.url.rsplit('/', 1)[-1]}")
        verified = Webhook(sub.signing_secret).verify(request.body, headers_of(request))
        assert verified["payload"] == {"order": {"number": "R9", "lines": [{"sku": "a", "qty": 2}]}, "parameters": []}


def test_what_it_may_not_take_is_left_to_the_pumps_which_send_it_in_order(subscriber):
    free = SubscriptionFactory(url=subscriber.url("/free"))
    limited = SubscriptionFactory(url=subscriber.url("/limited"), max_in_flight=1)
    holding = SubscriptionFactory(url=subscriber.url("/holding"))
    off = SubscriptionFactory(url=subscriber.url("/off"))
    # The limited endpoint's one slot is taken by a batch on the wire.
    busy = DeliveryFactory(
        subscription=limited,
        event=EventFactory(resource_key="order:R0"),
        state=DeliveryState.DELIVERING,
        claim=42,
        attempt_count=1,
        lease_expires_at=timezone.now() + timedelta(minutes=1),
    )
    # An earlier delivery of the same order is still owed to the holding endpoint.
    earlier = DeliveryFactory(subscription=holding, event=EventFactory(resource_key="order:R9", payload={"n": 1}))
    event = EventFactory(resource_key="order:R9", payload={"n": 2})
    d_free, d_limited, d_holding, d_off = fan(event, [free, limited, holding, off])
    off.is_enabled = False
    off.save(update_fields=["is_enabled"])

    result = deliveries_fan_out(delivery_ids=[d_free.pk, d_limited.pk, d_holding.pk, d_off.pk])

    assert result.verdicts == {d_free.pk: "delivered"}
    assert result.left == sorted([holding.pk, off.pk])
    # The limited endpoint's slot holder looks again once done: no pump is woken for it.
    assert result.held == [limited.pk]
    assert subscriber.received("/limited") == [] and subscriber.received("/holding") == []
    assert subscriber.received("/off") == []
    assert Delivery.objects.get(pk=d_holding.pk).state == DeliveryState.PENDING
    # Their pumps: the holding endpoint gets the order's events in the order they were accepted.
    deliveries_pump(subscription_id=holding.pk)
    assert [r.json()["payload"]["n"] for r in subscriber.received("/holding")] == [1, 2]
    assert set(Delivery.objects.filter(pk__in=[earlier.pk, d_holding.pk]).values_list("state", flat=True)) == {
        "delivered"
    }
    # The limited endpoint's pump sends nothing while the slot is taken, and its delivery once free.
    assert deliveries_pump(subscription_id=limited.pk).verdicts == {}
    Delivery.objects.filter(pk=busy.pk).update(state=DeliveryState.DELIVERED, claim=None, lease_expires_at=None)
    assert deliveries_pump(subscription_id=limited.pk).verdicts == {d_limited.pk: "delivered"}
    assert Delivery.objects.get(pk=d_off.pk).state == DeliveryState.PENDING


def test_a_delivery_its_claim_held_back_is_woken_once_it_is_done(subscriber):
    first_sub, other = (SubscriptionFactory(url=subscriber.url(f"/held/{n}")) for n in range(2))
    head = fan(EventFactory(resource_key="order:R5", payload={"n": 1}), [first_sub, other])
    batches = fanout_claim([d.pk for d in head])
    assert len(batches) == 2
    # Pushed while the first event is on the wire: its fan-out leaves it (the order's head is
    # delivering), and the first one's pump finds nothing it may take yet.
    after = fan(EventFactory(resource_key="order:R5", payload={"n": 2}), [first_sub, other])
    assert deliveries_fan_out(delivery_ids=[d.pk for d in after]).verdicts == {}
    Delivery.objects.filter(pk__in=[d.pk for d in head]).update(
        state=DeliveryState.PENDING, claim=None, lease_expires_at=None, attempt_count=0
    )
    # Sent now, the first fan-out finds the second event due at both endpoints once done.
    result = deliveries_fan_out(delivery_ids=[d.pk for d in head])
    assert set(result.verdicts.values()) == {"delivered"}
    assert result.due == sorted([first_sub.pk, other.pk])


def test_a_failing_endpoint_among_them_is_retried_as_a_pump_retries_it(subscriber, settings):
    settings.HUB_RETRY_JITTER = 0
    good = SubscriptionFactory(url=subscriber.url("/good"))
    bad = SubscriptionFactory(url=subscriber.url("/bad"), retry_schedule=[30])
    gone = SubscriptionFactory(url=subscriber.url("/gone"))
    subscriber.program("/bad", Reply.error(503), Reply.ok())
    subscriber.program("/gone", Reply.gone())
    event = EventFactory()
    d_good, d_bad, d_gone = fan(event, [good, bad, gone])

    before = timezone.now()
    result = deliveries_fan_out(delivery_ids=[d_good.pk, d_bad.pk, d_gone.pk])

    assert result.verdicts == {d_good.pk: "delivered", d_bad.pk: "retry", d_gone.pk: "gone"}
    d_bad.refresh_from_db()
    assert (d_bad.state, d_bad.attempt_count, d_bad.last_status_code, d_bad.claim) == ("retrying", 1, 503, None)
    assert d_bad.next_attempt_at >= before + timedelta(seconds=30)
    assert Attempt.objects.get(delivery=d_bad, number=1).status_code == 503
    bad.refresh_from_db()
    gone.refresh_from_db()
    assert bad.failing_since is not None and bad.is_enabled
    assert not gone.is_enabled
    event.refresh_from_db()
    assert event.status == "delivering"  # the retry is still owed
    # Its retry comes due; the endpoint's pump sends it, and the failing streak ends.
    Delivery.objects.filter(pk=d_bad.pk).update(next_attempt_at=timezone.now())
    assert deliveries_pump(subscription_id=bad.pk).verdicts == {d_bad.pk: "delivered"}
    assert Attempt.objects.filter(delivery=d_bad).count() == 2
    bad.refresh_from_db()
    assert bad.failing_since is None
    event.refresh_from_db()
    assert event.status == "partially_failed"


def test_replies_with_content_at_several_endpoints_are_all_taken_in(subscriber):
    subs = [
        SubscriptionFactory(url=subscriber.url(f"/reply/{n}"), parameters=[{"name": "since", "value": "0"}])
        for n in range(3)
    ]
    for n in range(3):
        subscriber.program(
            f"/reply/{n}",
            Reply.ok(
                notifications=[{"level": "info", "subject": f"seen by {n}"}],
                parameters=[{"name": "since", "value": str(n + 1)}],
            ),
        )
    deliveries = fan(EventFactory(), subs)
    result = deliveries_fan_out(delivery_ids=[d.pk for d in deliveries])
    assert set(result.verdicts.values()) == {"delivered"}
    for n, sub in enumerate(subs):
        sub.refresh_from_db()
        assert sub.parameters == [{"name": "since", "value": str(n + 1)}]
        assert list(sub.notifications.values_list("subject", flat=True)) == [f"seen by {n}"]


def test_a_push_coalesced_into_its_message_is_woken_even_when_it_takes_nothing(subscriber):
    first_sub, other = (SubscriptionFactory(url=subscriber.url(f"/coalesced/{n}")) for n in range(2))
    named = fan(EventFactory(resource_key=None), [first_sub, other])
    # A pump took both before the fan-out's task ran; meanwhile a push to the first endpoint
    # published nothing, its pending mark standing for the fan-out's message.
    Delivery.objects.filter(pk__in=[d.pk for d in named]).update(
        state=DeliveryState.DELIVERING, claim=5, attempt_count=1, lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    DeliveryFactory(subscription=first_sub, event=EventFactory(resource_key=None))

    result = deliveries_fan_out(delivery_ids=[d.pk for d in named], endpoints=[first_sub.pk, other.pk])

    assert result.verdicts == {} and result.left == []
    assert result.due == [first_sub.pk]


def test_pushes_coalesced_while_its_message_waited_are_a_fan_out_each_not_a_pump_per_endpoint(
    subscriber, unconsumed_queue, settings
):
    """Under a steady stream, a push that lands while a fan-out's message waits for a worker is
    coalesced into it (its endpoints' marks stand). Once done, the fan-out found that event due at
    every endpoint and woke a pump each: a claim and a commit per endpoint for one event, which
    fell behind the next pushes and fed itself (the bench's fanload: 271 pumps beside ~128
    fan-outs for 200 events). It wakes each endpoint's oldest due in one fan-out message instead."""
    from routing.wakeup import FANOUT_TASK, PUMP_TASK, deliveries_wake, pumps_started

    settings.HUB_PUMP_COALESCE_SECONDS = 60
    settings.HUB_FANOUT_MAX_ENDPOINTS = 32
    subs = [SubscriptionFactory(url=subscriber.url(f"/stream/{n}")) for n in range(4)]
    ids = [sub.pk for sub in subs]
    first = fan(EventFactory(), subs)
    assert [t for t, _ in deliveries_wake([(d.pk, d.subscription_id) for d in first])] == [FANOUT_TASK]
    second = fan(EventFactory(), subs)
    assert deliveries_wake([(d.pk, d.subscription_id) for d in second]) == []  # coalesced
    alone = [DeliveryFactory(event=EventFactory(), subscription=sub) for sub in subs[:2]]
    assert deliveries_wake([(alone[0].pk, subs[0].pk)]) == []

    pumps_started(ids)  # the task starts: its endpoints' marks are cleared
    result = deliveries_fan_out(delivery_ids=[d.pk for d in first], endpoints=ids)

    assert set(result.verdicts.values()) == {"delivered"}
    assert result.due == sorted(ids)
    # Each endpoint's oldest due in one message: the coalesced event, as its push would have sent it.
    assert result.woken == [(FANOUT_TASK, [[d.pk for d in second], ids])]
    pumps_started(ids)
    # Once that is done, the next at each endpoint go together, whatever their events.
    result = deliveries_fan_out(delivery_ids=[d.pk for d in second], endpoints=ids)
    assert set(result.verdicts.values()) == {"delivered"}
    assert result.woken == [(FANOUT_TASK, [[d.pk for d in alone], ids[:2]])]
    pumps_started(ids)

    # A backlog (more due at an endpoint than half the endpoints due): their pumps send it in batches.
    for _ in range(2):
        DeliveryFactory(event=EventFactory(), subscription=subs[1])
    result = deliveries_fan_out(delivery_ids=[], endpoints=ids)  # a pump took its deliveries first
    assert result.verdicts == {} and result.due == ids[:2]
    assert result.woken == [(PUMP_TASK, [ids[0]]), (PUMP_TASK, [ids[1]])]
    pumps_started(ids)


def test_endpoints_whose_slots_overlapping_fan_outs_hold_are_left_to_them_not_to_a_pump_each(
    subscriber, unconsumed_queue, settings
):
    """Fan-outs of a steady stream overlap: one that finds its endpoints' slots taken by another
    woke a pump for each, which found the limit taken too (the bench's fanload: more pumps than
    fan-outs). The holder looks again once it is recorded and wakes the event as a fan-out."""
    from routing.wakeup import FANOUT_TASK, pumps_started

    settings.HUB_PUMP_COALESCE_SECONDS = 60
    settings.HUB_FANOUT_MAX_ENDPOINTS = 32
    subs = [SubscriptionFactory(url=subscriber.url(f"/overlap/{n}"), max_in_flight=1) for n in range(3)]
    ids = [sub.pk for sub in subs]
    # Orders of their own: only the slots hold them back.
    first = fan(EventFactory(resource_key=None), subs)
    holder = fanout_claim([d.pk for d in first])
    assert len(holder) == 3
    second = fan(EventFactory(resource_key=None), subs)

    result = deliveries_fan_out(delivery_ids=[d.pk for d in second], endpoints=ids)

    assert result.verdicts == {} and result.left == [] and result.woken == []
    assert result.held == ids
    assert subscriber.received("/overlap/0") == []
    # A holder whose lease ran out (a dead worker's) holds no slot: the fan-out sends that one itself.
    Delivery.objects.filter(pk=first[0].pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    result = deliveries_fan_out(delivery_ids=[d.pk for d in second], endpoints=ids)
    assert result.verdicts == {d.pk: "delivered" for d in second[:1]}
    assert result.held == ids[1:]
    # The holder, sent now (its claim given back for the call), finds the rest of the second event due.
    Delivery.objects.filter(pk__in=[d.pk for d in first]).update(
        state=DeliveryState.PENDING, claim=None, lease_expires_at=None, attempt_count=0
    )
    done = deliveries_fan_out(delivery_ids=[d.pk for d in first], endpoints=ids)
    assert set(done.verdicts.values()) == {"delivered"}
    assert done.woken == [(FANOUT_TASK, [[d.pk for d in second[1:]], ids[1:]])]
    pumps_started(ids)


def test_a_sweep_before_the_heartbeats_first_renewal_leaves_its_claims_alone(subscriber, settings):
    """A lease margin shorter than a quarter lease (the reliability tests' worker: 1 s) once made
    the fan-out's first lease the margin alone, which ran out before the heartbeat's first round
    (a quarter of HUB_LEASE_SECONDS later at most): a sweep in between took the deliveries back
    while they were on the wire, and the endpoints' pumps sent them a second time."""
    settings.HUB_LEASE_SECONDS = 6
    settings.HUB_DELIVERY_LEASE_MARGIN_SECONDS = 1
    subs = [SubscriptionFactory(url=subscriber.url(f"/early/{n}"), timeout_seconds=2) for n in range(2)]
    deliveries = fan(EventFactory(), subs)
    claimed_at = timezone.now()
    batches = fanout_claim([d.pk for d in deliveries])
    assert len(batches) == 2

    # The latest the heartbeat's first round can come: it renews every quarter lease.
    result = deliveries_sweep(now=claimed_at + timedelta(seconds=renew_interval()))

    assert result.reclaimed == 0
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    assert set(rows.values_list("state", flat=True)) == {DeliveryState.DELIVERING}
    for batch in batches:
        leased = Delivery.objects.get(pk=batch.deliveries[0].pk).lease_expires_at
        # Renewed from then on, never past the hold limit.
        assert leased <= batch.hold_until


def test_a_fan_out_sent_and_recorded_reads_no_column_its_claim_left_out(subscriber):
    """The claim reads back of a delivery, its event and the stores only what a pump's claim does
    (routing.sql.CLAIMED_*_FIELDS): the rest stays deferred through the sends, the recording and
    the outcome log lines (reading one would cost a query per delivery)."""
    import logging

    from routing.fanout import _close, _send_all, logger
    from tests.factories import StoreFactory

    subs = [
        SubscriptionFactory(url=subscriber.url(f"/narrow/{n}"), store=StoreFactory() if n else None) for n in range(3)
    ]
    event = EventFactory(store=StoreFactory(), payload={"order": {"number": "R3"}})
    fan(event, subs)
    batches = fanout_claim([d.pk for d in Delivery.objects.filter(event=event)])
    assert len(batches) == 3
    deliveries = [b.deliveries[0] for b in batches]
    event_read = deliveries[0].event
    # The deliveries, their one event and its store; each endpoint's store (one has none).
    instances = [*deliveries, event_read, event_read.store, *(b.subscription.store for b in batches[1:])]
    deferred = [instance.get_deferred_fields() for instance in instances]
    assert all(deferred), deferred
    assert batches[0].subscription.store is None

    previous = logger.level
    logger.setLevel(logging.INFO)  # the outcome lines are built too
    try:
        verdicts = _close(batches, _send_all(batches))
    finally:
        logger.setLevel(previous)
    assert set(verdicts.values()) == {"delivered"}
    assert [instance.get_deferred_fields() for instance in instances] == deferred
    # Each endpoint's request named its own store, else the event's.
    names = [subscriber.received(f"/narrow/{n}")[0].headers.get("X-Hub-Store") for n in range(3)]
    assert names == [event.store.name, subs[1].store.name, subs[2].store.name]
