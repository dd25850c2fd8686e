"""The admin's front page (counts per state linking to filtered lists) and the order timeline."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from routing.models import Delivery
from tests.factories import DeliveryFactory, EventFactory, NotificationFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def count_link(text: str, element_id: str) -> tuple[str, int]:
    match = re.search(rf'id="{element_id}" href="([^"]+)"><strong>(\d+)</strong>', text)
    assert match, element_id
    return match.group(1).replace("&amp;", "&"), int(match.group(2))


def test_dashboard_counts_each_state_and_links_to_the_filtered_list(admin_client):
    DeliveryFactory.create_batch(3, state="pending")
    DeliveryFactory.create_batch(2, state="retrying")
    DeliveryFactory(state="failed")
    yesterday = DeliveryFactory(state="failed")
    last_week = DeliveryFactory(state="failed")
    Delivery.objects.filter(pk=yesterday.pk).update(updated_at=timezone.now() - timedelta(hours=3))
    Delivery.objects.filter(pk=last_week.pk).update(updated_at=timezone.now() - timedelta(days=3))

    text = admin_client.get("/admin/").content.decode()
    expected = {
        "count-queued": 3,
        "count-retrying": 2,
        "count-failed-hour": 1,
        "count-failed-day": 2,
        "count-failed": 3,
        "count-delivering": 0,
    }
    for element_id, count in expected.items():
        url, shown = count_link(text, element_id)
        assert shown == count, element_id
        # The link opens the list of exactly those deliveries.
        assert len(admin_client.get(url).context["cl"].result_list) == count, url


def test_dashboard_counts_the_disabled_subscriptions_and_links_to_them(admin_client):
    SubscriptionFactory.create_batch(2, is_enabled=False)
    SubscriptionFactory(is_enabled=True)

    url, shown = count_link(admin_client.get("/admin/").content.decode(), "count-subscriptions-disabled")
    assert shown == 2
    assert len(admin_client.get(url).context["cl"].result_list) == 2


def test_dashboard_counts_events_per_status(admin_client):
    EventFactory.create_batch(2, status="failed")
    EventFactory(status="delivered")
    text = admin_client.get("/admin/").content.decode()
    assert re.search(r'status__exact=failed"><span class="hub-badge hub-failed">Failed</span> 2</a>', text)
    assert re.search(r'status__exact=delivered"><span class="hub-badge hub-delivered">Delivered</span> 1</a>', text)
    assert 'action="/admin/events/event/timeline/"' in text


def test_timeline_lists_an_orders_events_attempts_and_notifications_in_order(admin_client, make_orders):
    first, second = make_orders(2)
    number = first.payload["order"]["number"]
    later = EventFactory(
        store=first.store,
        message="order:updated",
        payload={"order": {"number": number}},
        resource_key=f"order:{number}",
    )
    response = admin_client.get("/admin/events/event/timeline/", {"order": number})
    assert response.status_code == 200
    timeline = response.context["timeline"]
    assert timeline.resource_key == f"order:{number}"
    kinds = [(entry.kind, entry.event.pk) for entry in timeline.entries]
    child = first.children.get()
    # Its two events and the shipment an endpoint returned; nothing of the other order.
    assert {pk for kind, pk in kinds if kind == "event"} == {first.pk, later.pk, child.pk}
    assert second.pk not in {pk for _, pk in kinds}
    assert [kind for kind, pk in kinds if pk == first.pk].count("attempt") == 3
    assert ("notification", first.pk) in kinds and ("delivered", first.pk) in kinds
    times = [entry.at for entry in timeline.entries]
    assert times == sorted(times)
    assert kinds[0] == ("event", first.pk)

    text = response.content.decode()
    assert f"Order {number} imported" in text
    assert "connection refused" in text
    assert f'href="/admin/events/event/{later.pk}/change/"' in text


def test_timeline_takes_a_full_key_and_says_when_nothing_is_known(admin_client, make_orders):
    [event] = make_orders(1)
    child = event.children.get()
    by_key = admin_client.get("/admin/events/event/timeline/", {"key": child.resource_key})
    assert [e.event.pk for e in by_key.context["timeline"].entries] == [child.pk]
    unknown = admin_client.get("/admin/events/event/timeline/", {"order": "R-unknown"})
    assert "Nothing is known about order:R-unknown." in unknown.content.decode()
    empty = admin_client.get("/admin/events/event/timeline/")
    assert empty.status_code == 200 and empty.context["timeline"] is None


def test_timeline_shows_notifications_about_the_order(admin_client):
    subscription = SubscriptionFactory(name="erp")
    delivery = DeliveryFactory(subscription=subscription, event=EventFactory(resource_key="order:R9"))
    NotificationFactory(delivery=delivery, level="error", subject="Customer unknown")
    text = admin_client.get("/admin/events/event/timeline/", {"order": "R9"}).content.decode()
    assert '<span class="hub-badge hub-error">Error</span> Customer unknown' in text
    assert "Notification from erp" in text


def test_dashboard_names_the_oldest_waiting_delivery(admin_client):
    assert "Nothing is waiting to be delivered." in admin_client.get("/admin/").content.decode()
    old = DeliveryFactory(state="retrying", created_at=timezone.now() - timedelta(hours=2))
    DeliveryFactory(state="pending")
    text = admin_client.get("/admin/").content.decode()
    assert f'<a href="/admin/routing/delivery/{old.pk}/change/">delivery {old.pk}</a>' in text
    assert "(retrying), made 2\xa0hours ago" in text


def test_a_pushed_shipment_is_on_its_orders_timeline(admin_client, api, settings):
    settings.HUB_RESOURCE_KEY_PATHS = {}
    order = {"message": "order:new", "message_id": "o-1", "payload": {"order": {"number": "R104702249"}}}
    shipment = {
        "message": "shipment:confirm",
        "message_id": "s-1",
        "payload": {"shipment": {"number": "H9", "order_number": "R104702249", "tracking": "1Z"}},
    }
    assert api.post("/events", order, format="json").status_code == 202
    assert api.post("/events", shipment, format="json").status_code == 202

    timeline = admin_client.get("/admin/events/event/timeline/", {"order": "R104702249"}).context["timeline"]
    messages = [entry.event.message for entry in timeline.entries if entry.kind == "event"]
    assert messages == ["order:new", "shipment:confirm"]
