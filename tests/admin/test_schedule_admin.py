"""Schedules in the admin: create with the form (its sentences), pause and resume, run now; the
dashboard shows each one's last run, next run and last error; a tick is on the timeline of the
orders it returned."""

from __future__ import annotations

import pytest
from django.utils import timezone

from events.models import Event
from routing.models import Delivery, Schedule
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/routing/schedule/"


def form_errors(response) -> dict[str, list[str]]:
    return {field: list(errors) for field, errors in response.context["adminform"].form.errors.items()}


def test_a_schedule_is_created_with_the_form_and_runs_at_once(admin_client):
    erp = SubscriptionFactory(name="erp")
    response = admin_client.post(
        f"{LIST}add/", {"subscription": erp.pk, "message": "get_orders", "interval_seconds": "300", "cron": ""}
    )
    assert response.status_code == 302, form_errors(response)
    schedule = Schedule.objects.get(subscription=erp)
    assert (schedule.message, schedule.interval_seconds, schedule.is_paused) == ("get_orders", 300, False)
    assert schedule.next_run_at is not None and schedule.next_run_at <= timezone.now()


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"interval_seconds": "", "cron": ""}, "interval_seconds", "Give an interval in seconds or a cron expression."),
        ({"interval_seconds": "60", "cron": "* * * * *"}, "cron", "Give an interval or a cron expression, not both."),
        ({"interval_seconds": "", "cron": "every hour"}, "cron", "Not a cron expression of five fields"),
        ({"message": "Get Orders!", "interval_seconds": "60"}, "message", "The message must be lower case"),
    ],
)
def test_the_form_says_what_is_wrong_in_words(admin_client, data, field, says):
    erp = SubscriptionFactory(name="erp")
    response = admin_client.post(f"{LIST}add/", {"subscription": erp.pk, "message": "get_orders", **data})
    assert response.status_code == 200
    assert any(says in error for error in form_errors(response)[field]), form_errors(response)


def test_pause_resume_and_run_now(admin_client, unconsumed_queue):
    schedule = Schedule.objects.create(
        subscription=SubscriptionFactory(name="erp"), interval_seconds=3600, next_run_at=timezone.now()
    )
    admin_client.post(LIST, {"action": "pause_selected", "_selected_action": [schedule.pk]})
    schedule.refresh_from_db()
    assert schedule.is_paused
    assert '<span class="hub-badge hub-disabled">Paused</span>' in admin_client.get(LIST).content.decode()
    admin_client.post(LIST, {"action": "resume_selected", "_selected_action": [schedule.pk]})
    schedule.refresh_from_db()
    assert not schedule.is_paused

    response = admin_client.post(f"{LIST}{schedule.pk}/run-now/")
    assert response["Location"] == f"{LIST}{schedule.pk}/change/"
    [tick] = Event.objects.filter(origin=f"schedule:{schedule.pk}")
    assert tick.message == "get_orders"
    page = admin_client.get(response["Location"]).content.decode()
    assert 'id="run-now"' in page
    assert f'href="/admin/events/event/{tick.pk}/change/"' in page
    # The tick's page says where it came from: a schedule, not a store's push.
    assert "Made by a schedule" in admin_client.get(f"/admin/events/event/{tick.pk}/change/").content.decode()


def test_the_dashboard_shows_each_schedules_last_run_next_run_and_last_error(admin_client):
    now = timezone.now()
    Schedule.objects.create(
        subscription=SubscriptionFactory(name="marketplace"),
        interval_seconds=300,
        next_run_at=now,
        last_run_at=now,
        last_error="HTTP 503",
    )
    text = admin_client.get("/admin/").content.decode()
    assert 'id="hub-schedules"' in text
    assert "marketplace" in text and "get_orders, every 300s" in text
    assert "HTTP 503" in text
    assert f"{now:%Y-%m-%d %H:%M:%S}" in text


def test_a_tick_is_on_the_timeline_of_the_orders_it_returned(admin_client):
    schedule = Schedule.objects.create(
        subscription=SubscriptionFactory(name="marketplace"), interval_seconds=300, next_run_at=timezone.now()
    )
    tick = EventFactory(
        store=None, message="get_orders", payload={}, resource_key=None, origin=f"schedule:{schedule.pk}"
    )
    DeliveryFactory(event=tick, subscription=schedule.subscription, state="delivered")
    order = EventFactory(store=None, parent=tick, depth=1, message="order:new", resource_key="order:R7", source="reply")
    other = EventFactory(store=None, parent=tick, depth=1, message="order:new", resource_key="order:R8")
    timeline = admin_client.get("/admin/events/event/timeline/", {"order": "R7"}).context["timeline"]
    shown = {entry.event.pk for entry in timeline.entries}
    assert {tick.pk, order.pk} <= shown
    assert other.pk not in shown
    assert Delivery.objects.filter(event=tick).exists()


def test_the_subscription_form_names_the_messages_of_returned_objects(admin_client):
    erp = SubscriptionFactory(name="erp")
    url = f"/admin/routing/subscription/{erp.pk}/change/"
    form = admin_client.get(url).context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update(
        url="https://erp.example.com/hub",
        message_types='["order:new"]',
        filters="[]",
        parameters="[]",
        retry_schedule="null",
        object_messages='{"orders": "order:updated"}',
    )
    data.pop("store", None)
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    erp.refresh_from_db()
    assert erp.object_messages == {"orders": "order:updated"}
    data["object_messages"] = '{"orders": "shipped"}'
    errors = admin_client.post(url, data).context["adminform"].form.errors
    assert "is not a message name" in errors["object_messages"][0]


def test_a_subscription_links_to_its_schedule_or_to_adding_one(admin_client):
    erp = SubscriptionFactory(name="erp")
    page = admin_client.get(f"/admin/routing/subscription/{erp.pk}/change/").content.decode()
    assert f'href="{LIST}add/?subscription={erp.pk}"' in page
    schedule = Schedule.objects.create(subscription=erp, cron="*/15 * * * *", next_run_at=timezone.now())
    page = admin_client.get(f"/admin/routing/subscription/{erp.pk}/change/").content.decode()
    assert f'href="{LIST}{schedule.pk}/change/">Schedule (cron */15 * * * *)' in page
