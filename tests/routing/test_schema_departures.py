"""A pushed event whose payload departs from its message's schema is accepted and delivered as
sent, with one warn notification on the event naming where (routing.departures), written with the
event: on PostgreSQL in the push's one statement, and one INSERT for a whole batch's warnings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from events.models import Event
from events.services import event_build
from events.validation import envelope_validate
from routing.departures import departures_note
from routing.models import Delivery, Notification
from tests.factories import StoreFactory, SubscriptionFactory
from tests.live import wait_until

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seeds"


def _seed(name: str) -> dict:
    return json.loads((SEEDS / f"{name}.json").read_text())


def _departing(message_id: str, number: str = "R1") -> dict:
    """Seed 003's order with a quantity that is not a number and no city on the shipping address."""
    envelope = copy.deepcopy(_seed("003_order_new"))
    envelope["message_id"] = message_id
    order = envelope["payload"]["order"]
    order["number"] = number
    order["line_items"][0]["quantity"] = "one"
    del order["shipping_address"]["city"]
    return envelope


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["003_order_new", "003_order_update", "003_order_cancel", "001_order_new"])
def test_the_seeds_samples_push_without_a_warning(api, name):
    SubscriptionFactory(message_types=["order:*"])
    response = api.post("/events", _seed(name), format="json")
    assert response.status_code == 202, response.content
    assert not Notification.objects.exists()


@pytest.mark.django_db
def test_a_departing_payload_is_accepted_routed_and_stored_as_sent_with_one_warning(api):
    sub = SubscriptionFactory(message_types=["order:new"])
    envelope = _departing("d1")

    response = api.post("/events", envelope, format="json")

    assert response.status_code == 202, response.content
    event = Event.objects.get(uid=response.json()["event_id"])
    assert event.payload == envelope["payload"]
    assert list(event.deliveries.values_list("subscription_id", flat=True)) == [sub.pk]
    note = Notification.objects.get()
    assert (note.event_id, note.level, note.resource_key, note.subscription_id) == (event.pk, "warn", "order:R1", None)
    assert note.subject == "Departs from the order schema at $.payload.order.line_items[0].quantity"
    assert note.description.splitlines()[:2] == [
        "$.payload.order.line_items[0].quantity: is a string; the schema wants integer",
        "$.payload.order.shipping_address: 'city' is a required property",
    ]
    # The store sees it with the event.
    detail = api.get(f"/events/{event.uid}").json()
    assert [(n["level"], n["subject"]) for n in detail["notifications"]] == [("warn", note.subject)]


@pytest.mark.django_db
def test_an_unrouted_departing_event_is_noted_too(api):
    response = api.post("/events", {"message": "user:new", "payload": {"user": {"name": "no email"}}}, format="json")
    assert response.status_code == 202
    note = Notification.objects.get()
    assert note.subject == "Departs from the user schema at $.payload.user"
    assert note.event.status == "unrouted"


@pytest.mark.django_db
def test_a_repeated_message_id_writes_no_second_warning(api):
    first = api.post("/events", _departing("same"), format="json")
    again = api.post("/events", _departing("same"), format="json")
    assert (first.status_code, again.status_code) == (202, 200)
    assert Notification.objects.count() == 1


@pytest.mark.django_db
def test_the_check_can_be_turned_off_and_skips_what_is_too_large(api, settings):
    settings.HUB_SCHEMA_WARNINGS_MAX = 0
    assert api.post("/events", _departing("off"), format="json").status_code == 202
    settings.HUB_SCHEMA_WARNINGS_MAX = 10
    settings.HUB_SCHEMA_CHECK_MAX_BYTES = 1000
    assert api.post("/events", _departing("large"), format="json").status_code == 202
    assert not Notification.objects.exists()


@pytest.mark.django_db
def test_the_warnings_listed_are_capped(api, settings):
    settings.HUB_SCHEMA_WARNINGS_MAX = 2
    payload = {"order": {"number": "R3", "line_items": [{"name": "no sku"} for _ in range(20)]}}
    assert api.post("/events", {"message": "order:new", "payload": payload}, format="json").status_code == 202
    lines = Notification.objects.get().description.splitlines()
    assert len(lines) == 4 and lines[2].startswith("More departures not listed")


def _inserts(queries: CaptureQueriesContext, table: str) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if f'INSERT INTO "{table}"' in q["sql"]]


@pytest.mark.django_db
def test_a_batch_writes_its_warnings_in_one_insert_and_only_for_events_it_stored(api):
    SubscriptionFactory(message_types=["order:new"])
    api.post("/events", _departing("b0"), format="json")
    batch = [_departing("b0"), _departing("b1", "R2"), _seed("003_order_new"), _departing("b2", "R3")]

    with CaptureQueriesContext(connection) as queries:
        response = api.post("/events/batch", batch, format="json")

    assert [r["status_code"] for r in response.json()["results"]] == [200, 202, 202, 202]
    assert len(_inserts(queries, "routing_notification")) == 1
    noted = Notification.objects.order_by("id").values_list("event__message_id", "resource_key")
    assert list(noted) == [("b0", "order:R1"), ("b1", "order:R2"), ("b2", "order:R3")]


@pytest.mark.django_db(transaction=True)
def test_on_postgresql_the_warning_is_in_the_push_s_one_statement(client_for, unconsumed_queue):
    if connection.vendor != "postgresql":
        pytest.skip("an INSERT inside WITH is PostgreSQL's; elsewhere a transaction holds them")
    store = StoreFactory()
    subs = [SubscriptionFactory(message_types=["order:new"]), SubscriptionFactory(message_types=["order:*"])]
    api = client_for(store)
    assert api.post("/events", _departing("warm", "R0"), format="json").status_code == 202  # reads, caches

    for message_id in ("one", "two"):
        with CaptureQueriesContext(connection) as queries:
            response = api.post("/events", _departing(message_id, message_id), format="json")
        assert response.status_code == 202, response.content
        assert len(queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]

        event = Event.objects.get(message_id=message_id)
        deliveries = list(event.deliveries.order_by("id"))
        assert [d.subscription_id for d in deliveries] == [s.pk for s in subs]
        assert all(d.resource_key == f"order:{message_id}" for d in deliveries)
        assert Notification.objects.get(event=event).level == "warn"
    # Without subscriptions the warning alone goes with the event, still one statement.
    with CaptureQueriesContext(connection) as queries:
        response = api.post("/events", {"message": "user:new", "payload": {"user": {}}}, format="json")
    assert response.status_code == 202 and len(queries.captured_queries) == 1
    assert Notification.objects.filter(event__message="user:new").count() == 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_departing_event_is_delivered_as_sent(worker, subscriber, api):
    sub = SubscriptionFactory(url=subscriber.url("/departing"), message_types=["order:new"])
    envelope = _departing("live")

    assert api.post("/events", envelope, format="json").status_code == 202

    [request] = subscriber.wait_for("/departing")
    payload = request.json()["payload"]
    payload.pop("parameters")
    assert payload == envelope["payload"]
    wait_until(lambda: Delivery.objects.get(subscription=sub).state == "delivered", 30)
    assert Notification.objects.get().level == "warn"


@pytest.mark.django_db
def test_only_what_a_store_pushed_is_checked(store):
    envelope = envelope_validate(_departing("returned"))
    assert departures_note(event_build(store=None, envelope=envelope, origin="subscription:1")) is None
    assert departures_note(event_build(store=store, envelope=envelope)).level == "warn"
