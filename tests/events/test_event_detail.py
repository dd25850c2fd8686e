"""GET /events/<id>: the event, its payload, and its deliveries; only for the store that pushed it."""

import pytest

from events.models import Event
from routing.models import Attempt, Delivery
from tests.factories import StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

ORDER = {"message": "order:new", "message_id": "d-1", "payload": {"order": {"number": "R1", "total": "10.00"}}}


def test_detail_shows_the_event_as_pushed(api):
    event_id = api.post("/events", ORDER, format="json").json()["event_id"]
    response = api.get(f"/events/{event_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["event_id"] == event_id
    assert body["message"] == "order:new"
    assert body["message_id"] == "d-1"
    assert body["payload"] == ORDER["payload"]
    assert body["parent_event_id"] is None
    assert body["deliveries"] == [] and body["notifications"] == []


def test_detail_lists_deliveries_and_attempts(api):
    subscription = SubscriptionFactory(message_types=["order:new"])
    event_id = api.post("/events", ORDER, format="json").json()["event_id"]
    delivery = Delivery.objects.get(event__uid=event_id)
    Attempt.objects.create(
        delivery=delivery, number=1, request_method="POST", request_url=subscription.url, status_code=500
    )
    body = api.get(f"/events/{event_id}").json()
    assert body["status"] == "queued"
    assert [d["subscription"] for d in body["deliveries"]] == [subscription.name]
    assert body["deliveries"][0]["attempts"][0]["status_code"] == 500
    assert subscription.signing_secret not in str(body)


def test_another_stores_event_is_404(api, client_for):
    other = client_for(StoreFactory())
    theirs = other.post("/events", ORDER, format="json").json()["event_id"]
    response = api.get(f"/events/{theirs}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    # the owner still sees it, and nothing about it leaked into the 404
    assert other.get(f"/events/{theirs}").status_code == 200
    assert "order" not in response.json()["detail"].lower().replace(theirs, "")


def test_reply_events_without_store_are_not_readable_by_stores(api):
    orphan = Event.objects.create(store=None, message="order:new", message_id="x", payload={})
    assert api.get(f"/events/{orphan.uid}").status_code == 404
