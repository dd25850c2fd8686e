"""The events list and an event's page, through the Django test client."""

from __future__ import annotations

import html
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from events.models import Event
from tests.factories import EventFactory, StoreFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/events/event/"


def listed_ids(response) -> set[int]:
    return {event.pk for event in response.context["cl"].result_list}


def test_list_shows_status_at_a_glance(admin_client, make_orders):
    [event] = make_orders(1)
    page = admin_client.get(LIST)
    assert page.status_code == 200
    text = page.content.decode()
    assert '<span class="hub-badge hub-partially_failed">Partially failed</span>' in text
    assert '<span class="hub-badge hub-unrouted">Unrouted</span>' in text  # the returned event
    assert "routing/admin.css" in text
    assert event.message_id in text


def test_list_filters_by_status_message_store_and_date(admin_client):
    shop, other = StoreFactory(), StoreFactory()
    new = EventFactory(store=shop, message="order:new", status="failed")
    updated = EventFactory(store=shop, message="order:updated", status="delivered")
    elsewhere = EventFactory(store=other, message="order:new", status="delivered")
    long_ago = timezone.now() - timedelta(days=40)
    old = EventFactory(store=other, message="order:new", status="delivered", created_at=long_ago)

    assert listed_ids(admin_client.get(LIST, {"status__exact": "failed"})) == {new.pk}
    assert listed_ids(admin_client.get(LIST, {"message": "order:updated"})) == {updated.pk}
    assert listed_ids(admin_client.get(LIST, {"store__id__exact": other.pk})) == {elsewhere.pk, old.pk}
    since = (timezone.now() - timedelta(days=7)).isoformat()
    assert old.pk not in listed_ids(admin_client.get(LIST, {"created_at__gte": since}))
    assert listed_ids(admin_client.get(LIST, {"status__exact": "delivered", "message": "order:new"})) == {
        elsewhere.pk,
        old.pk,
    }
    # The message filter offers each stored message once.
    choices = admin_client.get(LIST).context["cl"].filter_specs[1].lookup_choices
    assert choices == [("order:new", "order:new"), ("order:updated", "order:updated")]


def test_search_by_message_id_order_number_resource_key_and_event_id(admin_client, make_orders):
    first, second = make_orders(2)
    number = first.payload["order"]["number"]
    assert listed_ids(admin_client.get(LIST, {"q": first.message_id})) == {first.pk}
    assert listed_ids(admin_client.get(LIST, {"q": number})) == {first.pk}
    assert listed_ids(admin_client.get(LIST, {"q": f"order:{number}"})) == {first.pk}
    assert listed_ids(admin_client.get(LIST, {"q": str(second.uid)})) == {second.pk}
    child = second.children.get()
    assert listed_ids(admin_client.get(LIST, {"q": child.resource_key})) == {child.pk}
    assert listed_ids(admin_client.get(LIST, {"q": "R-nothing-like-it"})) == set()


def test_detail_shows_payload_deliveries_attempts_notifications_and_family(admin_client, make_orders):
    [event] = make_orders(1)
    page = admin_client.get(f"{LIST}{event.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    # The payload, pretty-printed (indented, one key a line), escaped; as stored.
    stored = Event.objects.get(pk=event.pk).payload
    assert html.escape(json.dumps(stored, indent=2)) in text
    # Both deliveries, their states, every attempt with its code, latency, body and error.
    for delivery in event.deliveries.all():
        assert f'id="delivery-{delivery.pk}"' in text
    assert '<span class="hub-badge hub-delivered">Delivered</span>' in text
    assert '<span class="hub-badge hub-failed">Failed</span>' in text
    assert text.count('<tr class="attempt">') == 3
    assert "7 ms" in text and "12 ms" in text
    assert html.escape('{"ok": true}') in text and html.escape('{"error": "boom"}') in text
    assert "connection refused" in text
    assert "no answer" in text
    # What the endpoint said back, and the event it returned.
    assert f"Order {event.payload['order']['number']} imported" in text
    assert "as sales order 42" in text
    child = event.children.get()
    assert f'href="/admin/events/event/{child.pk}/change/"' in text
    # The timeline of its order is one click away.
    assert f"/admin/events/event/timeline/?key=order%3A{event.payload['order']['number']}" in text


def test_child_event_links_to_its_parent(admin_client, make_orders):
    [event] = make_orders(1)
    child = event.children.get()
    text = admin_client.get(f"{LIST}{child.pk}/change/").content.decode()
    assert f'href="/admin/events/event/{event.pk}/change/"' in text
    assert "Returned by an endpoint" in text


def test_failed_delivery_has_retry_cancel_and_replay_buttons_that_come_back_here(admin_client, failed_delivery):
    url = f"{LIST}{failed_delivery.event_id}/change/"
    text = admin_client.get(url).content.decode()
    for action in ("retry-now", "cancel", "replay"):
        assert f'action="/admin/routing/delivery/{failed_delivery.pk}/{action}/"' in text
    assert f'name="next" value="{url}"' in text


def test_events_cannot_be_added_edited_or_deleted(admin_client):
    event = EventFactory()
    assert admin_client.get(f"{LIST}add/").status_code == 403
    assert admin_client.post(f"{LIST}{event.pk}/change/", {"message": "order:x"}).status_code == 403
    assert admin_client.post(f"{LIST}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Event.objects.filter(pk=event.pk, message="order:new").exists()


def test_unknown_event_redirects_to_the_list_with_a_message(admin_client, db):
    response = admin_client.get(f"{LIST}999999/change/", follow=True)
    assert response.redirect_chain[-1][0] == "/admin/"
    assert "doesn’t exist" in response.content.decode()
