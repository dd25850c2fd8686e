"""A subscription's schedule over the management API: create, change, pause, run now, remove;
validated as the admin's form is, under the subscriptions scopes."""

from __future__ import annotations

import pytest

from events.models import Event
from routing.models import Schedule, Subscription
from tests.factories import SubscriptionFactory
from tests.ops.test_manage_api import M, key_make, manage, manage_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


@pytest.fixture
def erp() -> Subscription:
    return SubscriptionFactory(name="erp", message_types=["shipment:confirm"])


def test_a_schedule_is_created_read_changed_and_removed(manage, erp):  # noqa: F811 - a fixture
    created = manage.put(f"{M}/subscriptions/erp/schedule", {"interval_seconds": 300}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["subscription"], body["message"], body["interval_seconds"], body["cron"]) == (
        "erp",
        "get_orders",
        300,
        "",
    )
    assert body["is_paused"] is False and body["next_run_at"] is not None and body["last_error"] == ""

    assert manage.get(f"{M}/subscriptions/erp/schedule").json() == body

    changed = manage.patch(
        f"{M}/subscriptions/erp/schedule", {"interval_seconds": None, "cron": "*/15 * * * *"}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert (changed.json()["cron"], changed.json()["interval_seconds"]) == ("*/15 * * * *", None)
    assert manage.patch(f"{M}/subscriptions/erp/schedule", {"is_paused": True}, format="json").json()["is_paused"]

    # PUT replaces the whole: what it does not say goes back to the defaults.
    replaced = manage.put(
        f"{M}/subscriptions/erp/schedule", {"message": "get_shipments", "interval_seconds": 60}, format="json"
    )
    assert replaced.status_code == 200
    assert (replaced.json()["message"], replaced.json()["cron"], replaced.json()["is_paused"]) == (
        "get_shipments",
        "",
        False,
    )

    assert manage.delete(f"{M}/subscriptions/erp/schedule").status_code == 204
    missing = manage.get(f"{M}/subscriptions/erp/schedule")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "The subscription 'erp' has no schedule."


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"interval_seconds": 60, "cron": "* * * * *"}, "cron"),
        ({"cron": "every minute"}, "cron"),
        ({}, "interval_seconds"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"message": "GET ORDERS", "interval_seconds": 60}, "message"),
        ({"interval_seconds": 60, "every": 5}, "every"),
    ],
)
def test_a_bad_schedule_is_422_naming_the_field(manage, erp, body, field):  # noqa: F811 - a fixture
    response = manage.put(f"{M}/subscriptions/erp/schedule", body, format="json")
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field
    assert not Schedule.objects.exists()


def test_run_now_sends_a_tick_to_that_subscription(manage, erp, unconsumed_queue):  # noqa: F811 - a fixture
    manage.put(f"{M}/subscriptions/erp/schedule", {"interval_seconds": 3600}, format="json")
    response = manage.post(f"{M}/subscriptions/erp/schedule/run")
    assert response.status_code == 202, response.content
    tick = Event.objects.get(pk=response.json()["event_id"])
    assert tick.message == "get_orders"
    assert [d.subscription_id for d in tick.deliveries.all()] == [erp.pk]


def test_schedules_need_the_subscriptions_scopes(manage_for, erp):  # noqa: F811 - a fixture
    reader = manage_for("subscriptions:read", name="reader")
    assert reader.put(f"{M}/subscriptions/erp/schedule", {"interval_seconds": 60}, format="json").status_code == 403
    assert reader.post(f"{M}/subscriptions/erp/schedule/run").status_code == 403
    assert reader.get(f"{M}/subscriptions/erp/schedule").status_code == 404
    stores = manage_for("stores:read", name="stores")
    assert stores.get(f"{M}/subscriptions/erp/schedule").status_code == 403


def test_object_messages_are_set_and_shown_on_the_subscription(manage, erp):  # noqa: F811 - a fixture
    response = manage.patch(f"{M}/subscriptions/erp", {"object_messages": {"orders": "order:update"}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["object_messages"] == {"orders": "order:update"}
    bad = manage.patch(f"{M}/subscriptions/erp", {"object_messages": {"orders": "orders"}}, format="json")
    assert bad.status_code == 422 and bad.json()["field"] == "object_messages"


def test_a_subscription_that_only_pulls_needs_no_message_types_and_gets_only_its_ticks(
    manage,  # noqa: F811 - a fixture
    api,
    unconsumed_queue,
):
    everything = SubscriptionFactory(name="everything", message_types=["*"])
    created = manage.post(f"{M}/subscriptions", {"name": "pull", "url": "https://pull.example.com/"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["message_types"] == []
    pull = Subscription.objects.get(name="pull")
    assert pull.message_types == []
    assert manage.put(f"{M}/subscriptions/pull/schedule", {"interval_seconds": 3600}, format="json").status_code == 201

    assert (
        api.post("/events", {"message": "order:new", "payload": {"order": {"number": "R1"}}}, format="json").status_code
        == 202
    )
    pushed = Event.objects.get(message="order:new")
    assert [d.subscription_id for d in pushed.deliveries.all()] == [everything.pk]

    tick = manage.post(f"{M}/subscriptions/pull/schedule/run").json()
    assert [d.subscription_id for d in Event.objects.get(pk=tick["event_id"]).deliveries.all()] == [pull.pk]
