"""Tokens and signing secrets never appear in API responses or admin lists."""

import pytest

from events.models import Event, Store
from routing.models import Attempt, Delivery
from tests.factories import StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def test_event_detail_shows_deliveries_without_subscription_secrets(store, api):
    subscription = SubscriptionFactory()
    event = Event.objects.create(store=store, message="order:new", message_id="m-1", payload={"number": "R1"})
    delivery = Delivery.objects.create(event=event, subscription=subscription)
    Attempt.objects.create(delivery=delivery, number=1, request_method="POST", request_url=subscription.url)

    response = api.get(f"/events/{event.uid}")
    assert response.status_code == 200
    text = response.content.decode()
    assert response.json()["deliveries"][0]["subscription"] == subscription.name
    assert subscription.signing_secret not in text
    assert subscription.token not in text
    assert store.token not in text and store.token_hash not in text


def test_push_and_list_replies_carry_no_token(store, api):
    pushed = api.post("/events", {"message": "order:new", "payload": {}}, format="json")
    listed = api.get("/events")
    for response in (pushed, listed):
        assert store.token not in response.content.decode()
        assert store.token_hash not in response.content.decode()


def test_store_admin_list_and_form_show_no_token_or_hash(admin_client):
    store = StoreFactory()
    stored = Store.objects.get(pk=store.pk)
    for url in ("/admin/events/store/", f"/admin/events/store/{store.pk}/change/"):
        page = admin_client.get(url)
        assert page.status_code == 200
        text = page.content.decode()
        assert store.name in text
        assert store.token not in text
        assert stored.token_hash not in text
