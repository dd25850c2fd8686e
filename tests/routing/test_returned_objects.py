"""Objects a reply returns by plural type ("orders": [...]) become onward events, one per object,
named per subscription, keyed by the object so an unchanged one returned twice makes one event,
and bounded like returned messages (count, descendants). Real HTTP to the local subscriber."""

from __future__ import annotations

import pytest

from events.models import Event
from routing.models import Delivery, Notification, ReturnedObject
from routing.pump import deliveries_pump
from routing.returned_types import object_messages_validate, object_type_singular, returned_types
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply

pytestmark = pytest.mark.django_db


def answered(subscriber, reply: Reply, **subscription) -> Event:
    """Send one delivery to an endpoint answering `reply`; the event it was for."""
    subscriber.program("/erp", reply)
    sub = SubscriptionFactory(url=subscriber.url("/erp"), **subscription)
    delivery = DeliveryFactory(subscription=sub, event=EventFactory(message="order:new"))
    assert deliveries_pump(subscription_id=sub.pk).verdicts == {delivery.pk: "delivered"}
    return delivery.event


def again(event: Event) -> None:
    """The same endpoint answers another delivery (a later poll) the way it is programmed to."""
    sub = Delivery.objects.filter(event=event).get().subscription
    delivery = DeliveryFactory(subscription=sub, event=EventFactory(message="order:new"))
    assert deliveries_pump(subscription_id=sub.pk).verdicts == {delivery.pk: "delivered"}


def test_each_returned_object_becomes_an_onward_event_under_the_reply(subscriber):
    reply = Reply.ok(
        orders=[{"id": "R1", "total": "10.00"}, {"id": "R2", "total": "5.00"}],
        shipments=[{"id": "H1", "order_number": "R1"}],
    )
    parent = answered(subscriber, reply)
    children = list(Event.objects.filter(parent=parent).order_by("id"))
    assert [(c.message, c.payload) for c in children] == [
        ("order:new", {"order": {"id": "R1", "total": "10.00"}}),
        ("order:new", {"order": {"id": "R2", "total": "5.00"}}),
        ("shipment:new", {"shipment": {"id": "H1", "order_number": "R1"}}),
    ]
    assert [c.resource_key for c in children] == ["order:R1", "order:R2", "order:R1"]
    assert children[0].message_id.startswith("orders:R1:")
    assert all(c.origin == f"subscription:{Delivery.objects.get(event=parent).subscription_id}" for c in children)


def test_an_unchanged_object_returned_twice_makes_one_event_and_a_changed_one_an_update(subscriber):
    parent = answered(subscriber, Reply.ok(orders=[{"id": "R1", "state": "complete"}]))
    again(parent)
    assert Event.objects.filter(message__startswith="order:", parent__isnull=False).count() == 1

    subscriber.program("/erp", Reply.ok(orders=[{"state": "shipped", "id": "R1"}, {"id": "R1", "state": "complete"}]))
    again(parent)
    made = list(Event.objects.filter(parent__isnull=False).order_by("id").values_list("message", "payload"))
    assert made == [
        ("order:new", {"order": {"id": "R1", "state": "complete"}}),
        ("order:updated", {"order": {"state": "shipped", "id": "R1"}}),
    ]
    # The same content in another key order is the same object.
    subscriber.program("/erp", Reply.ok(orders=[{"id": "R1", "state": "shipped"}]))
    again(parent)
    assert Event.objects.filter(parent__isnull=False).count() == 2
    assert ReturnedObject.objects.count() == 2


def test_the_subscription_names_the_message_a_type_makes(subscriber):
    parent = answered(
        subscriber,
        Reply.ok(orders=[{"id": "R1"}], inventories=[{"id": "SKU-1", "count_on_hand": 3}]),
        object_messages={"orders": "order:update", "inventories": "stock:change"},
    )
    messages = list(Event.objects.filter(parent=parent).order_by("id").values_list("message", flat=True))
    assert messages == ["order:updated", "stock:change"]
    assert Event.objects.get(parent=parent, message="stock:change").payload == {
        "inventory": {"id": "SKU-1", "count_on_hand": 3}
    }


def test_objects_that_are_not_objects_are_noted_and_the_rest_flow(subscriber):
    parent = answered(subscriber, Reply.ok(orders=[{"id": "R1"}, "R2", 7]))
    assert Event.objects.filter(parent=parent).count() == 1
    subjects = sorted(Notification.objects.filter(event=parent).values_list("subject", flat=True))
    assert subjects == ["Returned object orders[1] ignored", "Returned object orders[2] ignored"]


def test_new_objects_are_capped_per_reply_and_the_rest_come_with_the_next_one(subscriber, settings):
    """Past the cap nothing is remembered and the reply's parameters (its `since`) are not stored:
    the next request asks for the same objects, and the unchanged ones no longer count."""
    settings.HUB_REPLY_MAX_OBJECTS = 3
    reply = Reply.ok(orders=[{"id": f"R{n}"} for n in range(5)], parameters=[{"name": "since", "value": "t5"}])
    parent = answered(subscriber, reply, parameters=[{"name": "since", "value": "t0"}])
    assert Event.objects.filter(parent=parent).count() == 3
    notes = {n.subject: n for n in Notification.objects.filter(event=parent)}
    assert set(notes) == {"2 returned objects dropped", "The reply's parameters were not stored"}
    assert "HUB_REPLY_MAX_OBJECTS" in notes["2 returned objects dropped"].description
    assert notes["The reply's parameters were not stored"].level == "error"
    sub = Delivery.objects.get(event=parent).subscription
    sub.refresh_from_db()
    assert sub.parameters == [{"name": "since", "value": "t0"}]

    again(parent)
    made = Event.objects.filter(message="order:new", parent__isnull=False).order_by("id")
    assert [e.payload["order"]["id"] for e in made] == [f"R{n}" for n in range(5)]
    sub.refresh_from_db()
    assert sub.parameters == [{"name": "since", "value": "t5"}]


def test_objects_share_the_root_events_budget_with_messages_and_those_left_out_come_later(subscriber, settings):
    settings.HUB_MAX_DESCENDANTS = 3
    reply = Reply.ok(
        messages=[{"message": "stock:update", "payload": {}}],
        orders=[{"id": f"R{n}"} for n in range(4)],
    )
    parent = answered(subscriber, reply)
    made = list(Event.objects.filter(parent=parent).order_by("id").values_list("message", flat=True))
    assert made == ["stock:update", "order:new", "order:new"]
    [note] = Notification.objects.filter(event=parent)
    assert note.level == "error"
    assert note.subject.startswith("2 returned objects not made into events")
    # Not marked as seen: a later reply (under another root) still makes them.
    subscriber.program("/erp", Reply.ok(orders=[{"id": f"R{n}"} for n in range(4)]))
    again(parent)
    assert Event.objects.filter(message="order:new", parent__isnull=False).count() == 4


def test_what_counts_as_returned_objects():
    body = {
        "orders": [],
        "shipments": [{}],
        "parameters": [],
        "messages": [],
        "notifications": [],
        "summary": "ok",
        "status": "ok",
        "Orders": [],
        "order": {"id": 1},
    }
    assert returned_types(body) == ["orders", "shipments"]
    assert [object_type_singular(t) for t in ("orders", "inventories", "addresses", "stock")] == [
        "order",
        "inventory",
        "address",
        "stock",
    ]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ([], "must be an object"),
        ({"orders": 7}, "must be a string"),
        ({"orders": "get orders"}, "not a message name"),
        ({"parameters": "order:new"}, "not a type"),
    ],
)
def test_object_messages_are_validated_with_a_sentence(value, error):
    with pytest.raises(ValueError, match=error):
        object_messages_validate(value)
