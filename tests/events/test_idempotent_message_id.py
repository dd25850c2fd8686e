"""message_id is the idempotency key per store."""

import pytest

from events.models import Event
from tests.factories import StoreFactory

pytestmark = pytest.mark.django_db

ORDER = {"message": "order:new", "message_id": "518726r84910000004", "payload": {"order": {"number": "R1"}}}


def test_duplicate_message_id_returns_first_event_with_200(api):
    first = api.post("/events", ORDER, format="json")
    again = api.post("/events", ORDER, format="json")

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["event_id"] == first.json()["event_id"]
    assert again.json()["duplicate"] is True
    assert again["Location"] == first["Location"]
    assert Event.objects.count() == 1


def test_duplicate_with_a_different_payload_still_returns_the_first_event(api):
    first = api.post("/events", ORDER, format="json").json()
    changed = {**ORDER, "message": "order:updated", "payload": {"order": {"number": "R2"}}}
    again = api.post("/events", changed, format="json")

    assert again.status_code == 200
    assert again.json()["event_id"] == first["event_id"]
    assert again.json()["message"] == "order:new"
    assert Event.objects.get().payload == ORDER["payload"]


def test_numeric_message_id_is_the_same_key_as_its_string(api):
    first = api.post("/events", {**ORDER, "message_id": 1234}, format="json")
    again = api.post("/events", {**ORDER, "message_id": "1234"}, format="json")
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["message_id"] == "1234"
    assert Event.objects.count() == 1


def test_different_stores_may_reuse_a_message_id(api, client_for):
    other = client_for(StoreFactory())
    mine = api.post("/events", ORDER, format="json")
    theirs = other.post("/events", ORDER, format="json")

    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["event_id"] != theirs.json()["event_id"]
    assert Event.objects.filter(message_id=ORDER["message_id"]).count() == 2


def test_events_without_message_id_are_never_duplicates(api):
    envelope = {"message": "order:new", "payload": {"order": {"number": "R1"}}}
    a = api.post("/events", envelope, format="json").json()
    b = api.post("/events", envelope, format="json").json()
    assert a["event_id"] != b["event_id"]
    assert a["message_id"] != b["message_id"]
    assert Event.objects.count() == 2


def test_duplicate_queues_no_new_delivery(api):
    from routing.models import Delivery
    from tests.factories import SubscriptionFactory

    SubscriptionFactory(message_types=["order:*"])
    api.post("/events", ORDER, format="json")
    api.post("/events", ORDER, format="json")
    assert Delivery.objects.count() == 1
