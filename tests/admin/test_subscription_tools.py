"""A subscription's endpoint token (set, revealed on purpose and recorded, never in lists) and its
"try it" box (a stored event rendered in the subscription's format, or the mapping's error)."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.models import LogEntry
from django.utils.html import escape

from routing.models import Subscription
from tests.factories import EventFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/routing/subscription/"


def history(subscription: Subscription) -> list[str]:
    return [e.get_change_message() for e in LogEntry.objects.filter(object_id=str(subscription.pk)).order_by("pk")]


def test_set_the_endpoint_token_then_it_is_masked_everywhere(admin_client):
    sub = SubscriptionFactory(name="erp")
    page = f"{LIST}{sub.pk}/token/"
    response = admin_client.post(page, {"token": "endpoint-key-abc123", "set": "1"})
    assert response.status_code == 302
    sub.refresh_from_db()
    assert sub.token == "endpoint-key-abc123"
    assert history(sub) == ["Set the endpoint token (X-Hub-Token)."]
    for url in (LIST, f"{LIST}{sub.pk}/change/", page):
        assert "endpoint-key-abc123" not in admin_client.get(url).content.decode()


def test_a_token_no_header_carries_is_refused_with_a_sentence(admin_client):
    sub = SubscriptionFactory(name="erp")
    response = admin_client.post(f"{LIST}{sub.pk}/token/", {"token": "two words", "set": "1"})
    assert response.status_code == 200
    assert "printable ASCII without spaces" in response.content.decode()
    assert history(sub) == []


def test_reveal_shows_the_token_and_the_history_records_who_looked(admin_client):
    sub = SubscriptionFactory(name="erp", token="endpoint-key-abc123")
    page = f"{LIST}{sub.pk}/token/"
    assert "endpoint-key-abc123" not in admin_client.get(page).content.decode()
    assert history(sub) == []
    response = admin_client.post(page, {"reveal": "1"})
    assert "endpoint-key-abc123" in response.content.decode()
    assert history(sub) == ["Revealed the endpoint token (X-Hub-Token)."]
    assert LogEntry.objects.get(object_id=str(sub.pk)).user.username == "admin"


def test_the_tools_need_the_change_permission(client, django_user_model):
    sub = SubscriptionFactory(name="erp", token="endpoint-key-abc123")
    viewer = django_user_model.objects.create_user("viewer", password="pw-long-enough-1", is_staff=True)
    client.force_login(viewer)
    for url in (f"{LIST}{sub.pk}/token/", f"{LIST}{sub.pk}/try/"):
        assert client.post(url, {"reveal": "1"}).status_code == 403


def test_try_renders_a_flat_request_with_the_token_masked(admin_client):
    sub = SubscriptionFactory(
        name="erp", url="https://erp.example.com/hub", payload_format="flat", token="endpoint-key-abc123"
    )
    event = EventFactory(message="order:updated", payload={"order": {"number": "R9"}})
    response = admin_client.post(f"{LIST}{sub.pk}/try/", {"event": str(event.uid)})
    text = response.content.decode()
    assert "POST https://erp.example.com/hub/update_order" in text
    assert "endpoint-key-abc123" not in text
    body = response.context["result"].body
    assert json.loads(body) == {"request_id": event.message_id, "order": {"number": "R9"}, "parameters": {}}


def test_try_a_transform_shows_the_output_or_the_error_and_saves_nothing(admin_client):
    sub = SubscriptionFactory(
        name="erp",
        url="https://erp.example.com/hub",
        payload_format="transform",
        transform='{"id": payload.order.number}',
    )
    event = EventFactory(payload={"order": {"number": "R9"}})
    page = f"{LIST}{sub.pk}/try/"
    assert escape('{"id": payload.order.number}') in admin_client.get(page).content.decode()
    response = admin_client.post(page, {"event": str(event.pk), "transform": '{"ref": "#" & payload.order.number}'})
    assert json.loads(response.context["result"].body) == {"ref": "#R9"}
    response = admin_client.post(page, {"event": str(event.pk), "transform": "$sum(payload.order.number)"})
    assert response.context["result"].error.startswith("the transform failed at character")
    assert "T0412" in response.content.decode()
    sub.refresh_from_db()
    assert sub.transform == '{"id": payload.order.number}'
    response = admin_client.post(page, {"event": "no-such-event"})
    assert "No stored event with the id" in response.content.decode()


def test_the_form_saves_a_format_and_refuses_a_transform_that_does_not_parse(admin_client):
    sub = SubscriptionFactory(name="erp", url="https://erp.example.com/hub")
    form = {
        "name": "erp",
        "url": "https://erp.example.com/hub",
        "message_types": '["order:*"]',
        "filters": "[]",
        "filter_mode": "all",
        "parameters": "[]",
        "payload_format": "transform",
        "paths": '{"order:new": "/add_order"}',
        "transform": "payload.order.(",
        "http_method": "",
        "timeout_seconds": "10",
        "retry_schedule": "null",
        "retry_enabled": "on",
        "is_enabled": "on",
        "disabled_reason": "",
    }
    response = admin_client.post(f"{LIST}{sub.pk}/change/", form)
    errors = response.context["adminform"].form.errors
    assert "at character" in errors["transform"][0]
    response = admin_client.post(f"{LIST}{sub.pk}/change/", {**form, "transform": '{"id": payload.order.number}'})
    assert response.status_code == 302
    sub.refresh_from_db()
    assert (sub.payload_format, sub.paths) == ("transform", {"order:new": "/add_order"})
