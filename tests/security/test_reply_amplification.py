"""What an endpoint's replies may make the hub do (PROTOCOL §3): returned messages are bounded per
root event (two endpoints answering each other multiply them at every generation), returned
parameters in count and size. Real HTTP; the amplification runs through real workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db.models import Q

from events.models import Event
from routing.models import Delivery, Notification
from routing.pump import deliveries_pump
from tests.conftest import TEST_QUEUE, _worker_env, deliveries_settle
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Received, Reply, Worker, pump_for, queue_purge, wait_until, workers_paused


def onward(count: int, message: str = "stock:update") -> Reply:
    """A reply returning `count` onward messages (no resource key: nothing holds them in order)."""
    return Reply.ok(messages=[{"message": message, "payload": {"n": n}} for n in range(count)])


def tree(root: Event) -> Q:
    """The root event and its descendants down to the depth limit."""
    found = Q(pk=root.pk)
    link = "parent"
    for _ in range(django_settings.HUB_MAX_EVENT_DEPTH):
        found |= Q(**{link: root.pk})
        link += "__parent"
    return found


# --- The budget of descendants ------------------------------------------------------------------


@pytest.mark.django_db
def test_onward_messages_past_the_root_events_budget_are_dropped_and_said_so(subscriber, settings):
    settings.HUB_MAX_DESCENDANTS = 5
    subscriber.program("/erp", onward(3, "shipment:confirm"))
    subscriber.program("/wms", onward(3, "stock:update"), onward(3, "stock:update"))
    erp = SubscriptionFactory(url=subscriber.url("/erp"), message_types=["order:new"])
    wms = SubscriptionFactory(url=subscriber.url("/wms"), message_types=["shipment:confirm"])
    root = DeliveryFactory(subscription=erp, event=EventFactory(message="order:new")).event

    assert pump_for(Delivery.objects.get(event=root).pk) == "delivered"
    children = list(Event.objects.filter(parent=root).order_by("id"))
    assert len(children) == 3
    assert not Notification.objects.filter(event=root).exists()

    # Two generations down the budget is shared: 2 of the next 3 fit, then none.
    first, second = (Delivery.objects.get(event=child, subscription=wms) for child in children[:2])
    verdicts = deliveries_pump(subscription_id=wms.pk).verdicts
    assert (verdicts[first.pk], verdicts[second.pk]) == ("delivered", "delivered")
    assert Event.objects.filter(parent=children[0]).count() == 2
    assert Event.objects.filter(parent=children[1]).count() == 0
    assert Event.objects.filter(tree(root)).count() == 1 + 5

    [note] = Notification.objects.filter(event=children[0])
    assert note.level == "error"
    assert note.subject == "1 onward message dropped: the root event's budget of 5 descendants is spent"
    assert "HUB_MAX_DESCENDANTS" in note.description
    [note] = Notification.objects.filter(event=children[1])
    assert note.subject.startswith("3 onward messages dropped")


@pytest.mark.django_db
def test_replies_recorded_in_one_batch_share_their_roots_budget_in_claim_order(subscriber, settings):
    """One batch, three replies under one root, 9 messages for a budget of 5: 3, 2 and 0 of them."""
    settings.HUB_MAX_DESCENDANTS = 5
    subscriber.program("/erp", onward(3))
    sub = SubscriptionFactory(url=subscriber.url("/erp"))
    root = EventFactory()
    children = [
        EventFactory(parent=root, depth=1, store=None, resource_key=f"order:R{n}", payload={"order": {"number": n}})
        for n in range(3)
    ]
    deliveries = [DeliveryFactory(subscription=sub, event=child, resource_key=child.resource_key) for child in children]
    result = deliveries_pump(subscription_id=sub.pk)
    assert set(result.verdicts) == {d.pk for d in deliveries}
    assert len(subscriber.received("/erp")) == 3
    assert [Event.objects.filter(parent=child).count() for child in children] == [3, 2, 0]
    assert [Notification.objects.filter(event=child).count() for child in children] == [0, 1, 1]


@pytest.mark.django_db
def test_invalid_onward_messages_take_nothing_from_the_budget(subscriber, settings):
    settings.HUB_MAX_DESCENDANTS = 2
    reply = Reply.ok(messages=[{"payload": {}}, {"message": "stock:update", "payload": {}}, {"message": 7}])
    subscriber.program("/erp", reply)
    delivery = DeliveryFactory(subscription=SubscriptionFactory(url=subscriber.url("/erp")))
    assert pump_for(delivery.pk) == "delivered"
    assert Event.objects.filter(parent=delivery.event).count() == 1
    notes = Notification.objects.filter(event=delivery.event)
    assert sorted(n.subject for n in notes) == ["Returned message 1 ignored", "Returned message 3 ignored"]


@pytest.fixture
def budget_workers(django_db_setup, _test_queue) -> Iterator[list[Worker]]:
    """Two workers with a budget of 30 descendants, the only ones taking the test queue meanwhile."""
    env = _worker_env(django_settings.DATABASES["default"])
    env["HUB_MAX_DESCENDANTS"] = "30"
    with workers_paused():
        queue_purge(TEST_QUEUE)
        workers = [
            Worker(
                env=env, log_path=Path(django_settings.VAR_DIR) / "test-worker" / f"budget-{n}.log", queue=TEST_QUEUE
            )
            for n in range(2)
        ]
        try:
            for worker in workers:
                worker.start()
            yield workers
        finally:
            # Idle before they stop: a delivery left on the wire would outlive them, claimed.
            deliveries_settle()
            for worker in workers:
                worker.stop()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_two_endpoints_answering_each_other_stop_at_the_root_events_budget(budget_workers, subscriber, api):
    """The amplification: each endpoint answers every message with 10 onward ones, which go to the
    other endpoint (an endpoint is not sent its own). Unbounded, one push makes 20 events in the
    first generation, 200 in the second, and so on to the depth limit; with a budget of 30 the
    push and exactly 30 descendants are all there ever is, across two workers sending at once."""

    def answer(_received: Received) -> Reply:
        return onward(10)

    subscriber.respond_with("/a", answer)
    subscriber.respond_with("/b", answer)
    SubscriptionFactory(url=subscriber.url("/a"), message_types=["*"], max_in_flight=4)
    SubscriptionFactory(url=subscriber.url("/b"), message_types=["*"], max_in_flight=4)
    pushed = api.post("/events", {"message": "order:new", "payload": {"order": {"number": "A1"}}}, format="json")
    assert pushed.status_code == 202, pushed.content
    root = Event.objects.get(uid=pushed.json()["event_id"])

    def done() -> bool:
        events = Event.objects.filter(tree(root))
        count = events.count()
        settled = not Delivery.objects.filter(
            event__in=events, state__in=["pending", "retrying", "delivering"]
        ).exists()
        return count > 31 or (count == 31 and settled)

    wait_until(done, timeout=90, interval=0.2, message="the reply chain ended")
    assert Event.objects.filter(tree(root)).count() == 1 + 30
    assert not Delivery.objects.filter(event__in=Event.objects.filter(tree(root))).exclude(state="delivered").exists()
    dropped = Notification.objects.filter(event__in=Event.objects.filter(tree(root)), level="error")
    assert dropped.exists()
    assert all("the root event's budget of 30 descendants is spent" in n.subject for n in dropped)
    # Every message returned past the budget is counted in a note: 20 + 30 * 10 returned, 30 kept.
    assert sum(int(n.subject.split()[0]) for n in dropped) == 20 + 30 * 10 - 30


# --- Returned parameters ------------------------------------------------------------------------


@pytest.mark.django_db
def test_parameters_that_grow_past_the_size_cap_are_refused_whole_and_said_so(subscriber, settings):
    """Each reply returns one new 20 KB parameter (and a small one): three fit in 64 KiB, the
    fourth reply's are refused whole, the small one with them, and the subscription keeps the three."""
    big = "x" * 20_000

    def grow(received: Received) -> Reply:
        n = received.json()["payload"]["n"]
        return Reply.ok(parameters=[{"name": f"blob{n}", "value": big}, {"name": "cursor", "value": n}])

    subscriber.respond_with("/grow", grow)
    sub = SubscriptionFactory(url=subscriber.url("/grow"))
    deliveries = [DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n})) for n in range(5)]
    assert deliveries_pump(subscription_id=sub.pk).verdicts == {d.pk: "delivered" for d in deliveries}
    sub.refresh_from_db()
    assert [p["name"] for p in sub.parameters] == ["blob0", "cursor", "blob1", "blob2"]
    assert {p["name"]: p["value"] for p in sub.parameters}["cursor"] == 2
    assert len(json.dumps(sub.parameters)) < settings.HUB_MAX_PARAMETERS_BYTES
    for delivery in deliveries[3:]:
        [note] = Notification.objects.filter(event=delivery.event)
        assert (note.level, note.subject) == ("error", "The reply's parameters were not stored")
        assert "HUB_MAX_PARAMETERS_BYTES" in note.description and "65536" in note.description
    # What later deliveries carry is what was kept (a pump reads the subscription when it starts).
    later = DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": 5}))
    assert pump_for(later.pk) == "delivered"
    last = subscriber.received("/grow")[-1].json()["payload"]["parameters"]
    assert [p["name"] for p in last] == ["blob0", "cursor", "blob1", "blob2"]


@pytest.mark.django_db
def test_parameters_past_the_count_cap_are_refused_and_an_ordinary_reply_still_merges(subscriber, settings):
    settings.HUB_MAX_PARAMETERS = 5
    subscriber.program(
        "/hook",
        Reply.ok(parameters=[{"name": f"p{n}", "value": n} for n in range(6)]),
        Reply.ok(parameters=[{"name": "cursor", "value": "2"}, {"name": "new", "value": 1}]),
    )
    sub = SubscriptionFactory(url=subscriber.url("/hook"), parameters=[{"name": "cursor", "value": "1"}])
    refused = DeliveryFactory(subscription=sub)
    assert pump_for(refused.pk) == "delivered"
    sub.refresh_from_db()
    assert sub.parameters == [{"name": "cursor", "value": "1"}]
    [note] = Notification.objects.filter(event=refused.event)
    assert note.subject == "The reply's parameters were not stored"
    assert "would hold 7" in note.description and "HUB_MAX_PARAMETERS)" in note.description

    merged = DeliveryFactory(subscription=sub)
    assert pump_for(merged.pk) == "delivered"
    sub.refresh_from_db()
    assert sub.parameters == [{"name": "cursor", "value": "2"}, {"name": "new", "value": 1}]
    assert not Notification.objects.filter(event=merged.event).exists()
