"""A store sees how each delivery fared and the notifications addressed to it, never an endpoint's
URL, credentials, token or reply; the admin still sees everything. The local subscriber echoes the
headers it got (X-Hub-Token among them) in its reply, delivered by a real worker.
"""

from __future__ import annotations

import pytest

from events.models import Event
from routing.models import DELIVERY_FINAL_STATES, Delivery, Subscription
from tests.factories import SubscriptionFactory
from tests.live import Received, Reply, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ORDER = {"message": "order:new", "payload": {"order": {"number": "R7001"}}}
NOTE = {"level": "info", "subject": "Order imported", "description": "As ERP order 5531."}

DELIVERY_KEYS = {
    "delivery_id",
    "subscription",
    "state",
    "attempt_count",
    "replay_of",
    "created_at",
    "next_attempt_at",
    "last_attempt_at",
    "delivered_at",
    "last_status_code",
    "attempts",
}
# `summary`: the sentence the endpoint's reply gave for the store to read (docs/protocol.md §3).
ATTEMPT_KEYS = {"number", "started_at", "status_code", "latency_ms", "succeeded", "outcome", "summary"}


def _echo(status: int, *, notify: bool = False):
    def reply(received: Received) -> Reply:
        body = {"headers_seen": received.headers, "path_seen": received.path}
        if notify:
            body["notifications"] = [NOTE]
        return Reply(status, json=body, headers={"X-Request-Id": "req-endpoint-only", "Server": "erp-box/9"})

    return reply


def _settled(event: Event) -> bool:
    return not Delivery.objects.filter(event=event).exclude(state__in=DELIVERY_FINAL_STATES).exists()


def test_a_store_sees_how_its_event_fared_and_nothing_of_the_endpoints(worker, subscriber, api, admin_client):
    port = subscriber.port
    subscriber.respond_with("/erp", _echo(200, notify=True))
    subscriber.respond_with("/down", _echo(500))
    subscriber.respond_with("/basic", _echo(200))
    erp = SubscriptionFactory(name="erp", url=subscriber.url("/erp?api_key=q-secret-41"), message_types=["order:*"])
    down = SubscriptionFactory(name="down", url=subscriber.url("/down"), message_types=["order:*"], retry_enabled=False)
    basic = SubscriptionFactory(name="basic", url=subscriber.url("/basic"), message_types=["order:*"])
    # Stored without the form (a migration, a fixture, a queryset update): user:password in the URL.
    Subscription.objects.filter(pk=basic.pk).update(url=f"http://hub-user:pw-s3cret-42@127.0.0.1:{port}/basic")

    pushed = api.post("/events", ORDER, format="json")
    assert pushed.status_code == 202, pushed.content
    event = Event.objects.get(uid=pushed.json()["event_id"])
    wait_until(lambda: _settled(event), timeout=60, message=f"deliveries settled (log: {worker.log_path})")
    # The endpoint's reply held the token it was sent: what the store must not be shown.
    [got] = subscriber.received("/erp")
    assert got.headers["X-Hub-Token"] == erp.token

    response = api.get(f"/events/{event.uid}")
    assert response.status_code == 200
    text = response.content.decode()
    never = [
        "127.0.0.1",
        f":{port}",
        "/erp",
        "/down",
        "/basic",
        "q-secret-41",
        "hub-user",
        "pw-s3cret-42",
        "headers_seen",
        "path_seen",
        "req-endpoint-only",
        "erp-box/9",
        "X-Hub-Token",
        "webhook-signature",
        *(s.token for s in (erp, down, basic)),
        *(s.signing_secret for s in (erp, down, basic)),
    ]
    assert [item for item in never if item in text] == []

    body = response.json()
    by_name = {d["subscription"]: d for d in body["deliveries"]}
    assert set(by_name) == {"erp", "down", "basic"}
    for delivery in body["deliveries"]:
        assert set(delivery) == DELIVERY_KEYS
        assert delivery["created_at"] and delivery["attempt_count"] == 1
        [attempt] = delivery["attempts"]
        assert set(attempt) == ATTEMPT_KEYS
        assert attempt["number"] == 1 and attempt["started_at"] == delivery["last_attempt_at"]

    assert by_name["erp"]["state"] == "delivered" and by_name["erp"]["delivered_at"]
    assert by_name["erp"]["last_status_code"] == 200
    assert by_name["erp"]["attempts"][0] | {"latency_ms": 0, "started_at": ""} == {
        "number": 1,
        "started_at": "",
        "status_code": 200,
        "latency_ms": 0,
        "succeeded": True,
        "outcome": "success",
        "summary": "",
    }
    assert by_name["down"]["state"] == "failed" and by_name["down"]["delivered_at"] is None
    assert by_name["down"]["last_status_code"] == 500
    assert by_name["down"]["attempts"][0]["outcome"] == "http_error"
    # Refused at send time (credentials in the URL): a failed attempt with no status, and no retry.
    assert by_name["basic"]["state"] == "failed" and by_name["basic"]["last_status_code"] is None
    assert by_name["basic"]["attempts"][0]["status_code"] is None
    assert subscriber.received("/basic") == []

    # What the endpoint addressed to the store is the store's to read.
    assert [(n["level"], n["subject"], n["description"]) for n in body["notifications"]] == [
        (NOTE["level"], NOTE["subject"], NOTE["description"])
    ]

    listed = api.get("/events").content.decode()
    assert [item for item in never if item in listed] == []

    # The admin still sees the endpoint's reply as it came.
    delivery = Delivery.objects.get(event=event, subscription=erp)
    page = admin_client.get(f"/admin/routing/delivery/{delivery.pk}/change/").content.decode()
    assert "headers_seen" in page and erp.token in page
