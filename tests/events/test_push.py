import pytest

from events.models import Event

pytestmark = pytest.mark.django_db


def test_push_returns_202_with_event_id_and_location(api):
    body = {"message": "order:new", "message_id": "m-1", "payload": {"order": {"number": "R1"}}}
    response = api.post("/events", body, format="json")
    assert response.status_code == 202, response.content
    event = Event.objects.get()
    assert response.json() == {
        "event_id": str(event.uid),
        "message": "order:new",
        "message_id": "m-1",
        "status": "unrouted",
        "duplicate": False,
    }
    assert response["Location"] == f"/events/{event.uid}"
    assert event.resource_key == "order:R1"
