"""The newer generation's replies with a real worker and a real local endpoint: a `summary` kept
with its attempt and shown with the event's notifications (to its store too, without the
endpoint's URL or reply), `parameters` as an object merged like the list; and a parameter a reply
returns is on the very next request to that endpoint, whether that request is the next of the
same batch (already claimed when the reply came) or the first of the pump's next batch."""

from __future__ import annotations

import pytest
from django.db import connection

from events.models import Event
from routing.models import Attempt, Delivery
from tests.factories import SubscriptionFactory
from tests.live import Received, Reply, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _order(message: str, number: str, message_id: str) -> dict:
    return {"message": message, "message_id": message_id, "payload": {"order": {"number": number}}}


def _parameters(request: Received) -> dict:
    return {p["name"]: p["value"] for p in request.json()["payload"]["parameters"]}


def _delivered(count: int) -> None:
    wait_until(lambda: Delivery.objects.filter(state="delivered").count() == count, 30, message=f"{count} delivered")


def test_a_summary_is_kept_with_its_attempt_and_shown_with_the_notifications(worker, subscriber, api, admin_client):
    subscriber.program(
        "/flat",
        Reply(500, json={"request_id": "1", "summary": "The ERP is down for maintenance"}),
        Reply.ok(request_id="2", summary="Order R1 sent to the ERP as SO-77", parameters={"since": "2026-01-01"}),
    )
    sub = SubscriptionFactory(
        url=subscriber.url("/flat"),
        message_types=["order:new"],
        retry_schedule=[0.2],
        parameters=[{"name": "api_key", "value": "k1"}],
    )
    response = api.post("/events", _order("order:new", "R1", "s1"), format="json")
    event = Event.objects.get(uid=response.json()["event_id"])
    _delivered(1)

    attempts = list(Attempt.objects.order_by("number").values_list("status_code", "summary"))
    assert attempts == [
        (500, "The ERP is down for maintenance"),
        (200, "Order R1 sent to the ERP as SO-77"),
    ]
    sub.refresh_from_db()
    assert sub.parameters == [{"name": "api_key", "value": "k1"}, {"name": "since", "value": "2026-01-01"}]

    detail = api.get(f"/events/{event.uid}")
    body = detail.json()
    assert [(n["level"], n["subject"]) for n in body["notifications"]] == [
        ("warn", "The ERP is down for maintenance"),
        ("info", "Order R1 sent to the ERP as SO-77"),
    ]
    assert [a["summary"] for a in body["deliveries"][0]["attempts"]] == [s for _, s in attempts]
    text = detail.content.decode()
    assert subscriber.url("/flat") not in text and "request_id" not in text and str(subscriber.port) not in text

    page = admin_client.get(f"/admin/events/event/{event.pk}/change/").content.decode()
    notifications = page[page.index('id="notifications"') :]
    assert "Order R1 sent to the ERP as SO-77" in notifications
    assert "The ERP is down for maintenance" in notifications


def test_a_returned_parameter_is_on_the_next_request_of_the_same_batch(worker, subscriber, api):
    sub = SubscriptionFactory(
        url=subscriber.url("/batch"), message_types=["order:*"], parameters=[{"name": "api_key", "value": "k1"}]
    )
    seen_claims: list[list[tuple[str, int | None]]] = []

    def answer(request: Received) -> Reply:
        if len(seen_claims) == 0:
            # The second delivery is already claimed, in this very batch, as the first is answered.
            try:
                rows = Delivery.objects.filter(subscription=sub).order_by("id").values_list("state", "claim")
                seen_claims.append(list(rows))
            finally:
                connection.close()
            return Reply.ok(parameters={"cursor": "c-1"})
        seen_claims.append([])
        return Reply.ok()

    subscriber.respond_with("/batch", answer)
    # Two orders in one batch push: one commit, one wake-up, one claim of both.
    response = api.post(
        "/events/batch", [_order("order:new", "R1", "b1"), _order("order:new", "R2", "b2")], format="json"
    )
    assert response.status_code == 200, response.content
    first, second = subscriber.wait_for("/batch", 2)
    _delivered(2)

    (claimed,) = seen_claims[:1]
    assert [state for state, _ in claimed] == ["delivering", "delivering"]
    assert claimed[0][1] == claimed[1][1] is not None
    assert _parameters(first) == {"api_key": "k1"}
    assert _parameters(second) == {"api_key": "k1", "cursor": "c-1"}


def test_a_returned_parameter_is_on_the_first_request_of_the_pump_s_next_batch(worker, subscriber, api):
    subscriber.program("/next", Reply.ok(parameters=[{"name": "cursor", "value": "c-1"}]), Reply.ok())
    SubscriptionFactory(url=subscriber.url("/next"), message_types=["order:*"], parameters=[])
    # One order's new and updated: the update waits for the new one, so it is the next batch's.
    response = api.post(
        "/events/batch", [_order("order:new", "R1", "n1"), _order("order:update", "R1", "n2")], format="json"
    )
    assert response.status_code == 200, response.content
    first, second = subscriber.wait_for("/next", 2)
    _delivered(2)

    assert (first.json()["message"], second.json()["message"]) == ("order:new", "order:updated")
    assert _parameters(first) == {}
    assert _parameters(second) == {"cursor": "c-1"}
