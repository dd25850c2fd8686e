import pytest

from tests.factories import StoreFactory

pytestmark = pytest.mark.django_db


def test_a_store_cannot_read_another_stores_event(client_for):
    owner, intruder = StoreFactory(), StoreFactory()
    pushed = client_for(owner).post(
        "/events", {"message": "order:new", "payload": {"order": {"number": "SECRET-1"}}}, format="json"
    )
    assert pushed.status_code == 202
    event_id = pushed.json()["event_id"]

    assert client_for(owner).get(f"/events/{event_id}").status_code == 200
    response = client_for(intruder).get(f"/events/{event_id}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "SECRET-1" not in response.content.decode()


def test_a_store_lists_only_its_own_events(client_for):
    owner, intruder = StoreFactory(), StoreFactory()
    client_for(owner).post("/events", {"message": "order:new", "payload": {"number": "A"}}, format="json")
    client_for(intruder).post("/events", {"message": "order:new", "payload": {"number": "B"}}, format="json")
    listed = client_for(intruder).get("/events").json()
    assert [e["resource_key"] for e in listed["results"]] == ["order:B"]


def test_a_store_cannot_reuse_another_stores_message_id_to_see_its_event(client_for):
    owner, intruder = StoreFactory(), StoreFactory()
    envelope = {"message": "order:new", "message_id": "shared-1", "payload": {"number": "A"}}
    first = client_for(owner).post("/events", envelope, format="json")
    second = client_for(intruder).post("/events", {**envelope, "payload": {"number": "B"}}, format="json")
    # Idempotency is per store: the intruder gets a new event of its own, not the owner's.
    assert second.status_code == 202
    assert second.json()["event_id"] != first.json()["event_id"]


def test_a_disabled_store_is_refused(client_for):
    store = StoreFactory(is_active=False)
    response = client_for(store).get("/events")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
