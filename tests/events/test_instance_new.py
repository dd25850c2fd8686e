"""instance_new makes the instance Model(**values) makes (events/instances.py): a push's Event and
Delivery are built by it."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models.signals import post_init

from events.instances import instance_new
from events.models import Event, EventSource, Store
from routing.models import Delivery, Subscription

# Defaults that are called, so differ between two instances made one after the other.
CALLED_DEFAULTS = {"uid", "created_at"}


def _parts(instance: Any) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """Its attribute names in the order they were set, their values (called defaults aside), its state."""
    held = vars(instance)
    # Made on first use (Django's ModelState): read, so that both sides have it.
    instance._state.fields_cache  # noqa: B018
    values = {k: v for k, v in held.items() if k != "_state" and k not in CALLED_DEFAULTS}
    return list(held), values, vars(held["_state"])


def _store() -> Store:
    store = Store(name="parity")
    store.pk = 7
    return store


@pytest.mark.parametrize(
    "values",
    [
        {
            "store": _store(),
            "message": "order:new",
            "payload": {"order": {"number": "R1"}},
            "resource_key": "order:R1",
            "source": EventSource.STORE,
            "origin": "",
            "parent": None,
            "depth": 0,
        },
        {"store": None, "message": "order:new", "payload": {}, "parent_id": 3, "depth": 1},
        {"store_id": 7, "message": "customer:new", "payload": {"a": [1, 2]}},
    ],
)
def test_an_event_is_made_as_its_model_makes_it(values):
    made, expected = instance_new(Event, **values), Event(**values)
    assert _parts(made) == _parts(expected)
    assert made._state.adding


def test_a_routed_delivery_is_made_as_its_model_makes_it():
    event = Event(store=_store(), message="order:new", payload={}, resource_key="order:R2")
    subscription = Subscription(name="parity")
    subscription.pk = 9
    made = Delivery.routed(event=event, subscription=subscription)
    expected = Delivery(
        event=event, subscription=subscription, resource_key=event.resource_key, next_attempt_at=event.created_at
    )
    assert _parts(made) == _parts(expected)
    assert made.event is event and made.subscription is subscription


def test_a_keyword_that_is_no_field_is_refused_as_the_model_refuses_it():
    with pytest.raises(TypeError, match="unexpected keyword"):
        instance_new(Event, message="order:new", colour="red")


def test_a_listening_init_signal_gets_model_init():
    seen: list[Any] = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(receiver, sender=Event)
    try:
        made = instance_new(Event, message="order:new", payload={})
    finally:
        post_init.disconnect(receiver, sender=Event)
    assert seen == [made]
