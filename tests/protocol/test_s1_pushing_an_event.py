"""PROTOCOL §1, pushing an event (store -> hub): the rules tests/events/ did not already pin."""

from __future__ import annotations

import pytest

from tests.factories import SubscriptionFactory
from tests.live import Reply, pump_for

pytestmark = pytest.mark.django_db

ENVELOPE = {"message": "order:new", "payload": {"order": {"number": "R100"}}}


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "text/plain;q=1, */*;q=0"])
def test_a_push_is_accepted_and_answered_in_json_whatever_the_accept_header(api, accept):
    """The hub speaks only JSON; a store whose HTTP client asks for something else must not lose
    its event to a 406."""
    response = api.post("/events", ENVELOPE, format="json", HTTP_ACCEPT=accept)
    assert response.status_code == 202, response.content
    assert response["Content-Type"] == "application/json"
    event_id = response.json()["event_id"]

    for url in ("/events", f"/events/{event_id}"):
        read = api.get(url, HTTP_ACCEPT=accept)
        assert read.status_code == 200, read.content
        assert read["Content-Type"] == "application/json"


def test_errors_stay_json_whatever_the_accept_header(api):
    response = api.post("/events", {"payload": {}}, format="json", HTTP_ACCEPT="text/html")
    assert response.status_code == 422
    assert response.json()["field"] == "message"


def test_event_detail_shows_how_each_attempt_fared_and_the_admin_keeps_the_reply(api, subscriber):
    """§1: GET /events/<id> shows each delivery with its attempts. The store is told how each
    attempt fared (time, status code, latency, outcome); the endpoint's reply headers, body and
    error text, which §3 has the hub record, stay on the attempt's record for the admin (an
    endpoint's reply can echo its token back: tests/security/test_store_view.py)."""
    subscriber.program("/erp", Reply(200, json={"ok": True}, headers={"X-Request-Id": "req-42"}))
    SubscriptionFactory(url=subscriber.url("/erp"), message_types=["order:*"])
    pushed = api.post("/events", ENVELOPE, format="json")
    assert pushed.status_code == 202
    from routing.models import Delivery

    [delivery] = Delivery.objects.filter(event__uid=pushed.json()["event_id"])
    assert pump_for(delivery.pk) == "delivered"

    body = api.get(f"/events/{pushed.json()['event_id']}").json()
    [attempt] = body["deliveries"][0]["attempts"]
    assert attempt["status_code"] == 200 and attempt["succeeded"] is True and attempt["outcome"] == "success"
    assert isinstance(attempt["latency_ms"], int) and attempt["started_at"]
    assert not {"url", "response_body", "response_headers", "error"} & set(attempt)
    assert body["deliveries"][0]["last_status_code"] == 200

    recorded = delivery.attempts.get()
    assert recorded.response_body == '{"ok": true}' and recorded.error == ""
    assert recorded.response_headers["x-request-id"] == "req-42"
    assert recorded.response_headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "header",
    [
        "Boutique Müller".encode().decode("latin-1"),  # raw UTF-8 bytes, as WSGI hands them over
        "Boutique%20M%C3%BCller",  # percent-encoded, as the hub itself sends X-Hub-Store
        "Boutique Müller",  # latin-1, what an older client writes
    ],
)
def test_x_hub_store_names_a_store_outside_ascii_however_the_client_encodes_it(client_for, header):
    from rest_framework.test import APIClient

    from tests.factories import StoreFactory

    store = StoreFactory(name="Boutique Müller")
    client = APIClient()
    client.credentials(HTTP_X_HUB_STORE=header, HTTP_X_HUB_ACCESS_TOKEN=store.token)
    response = client.post("/events", ENVELOPE, format="json")
    assert response.status_code == 202, response.content

    other = StoreFactory(name="Other Shop")
    client.credentials(HTTP_X_HUB_STORE=header, HTTP_X_HUB_ACCESS_TOKEN=other.token)
    assert client.post("/events", ENVELOPE, format="json").status_code == 401


def test_a_body_starting_with_a_utf8_byte_order_mark_is_read_as_json(api):
    """RFC 8259 lets a parser ignore a BOM; Windows and .NET HTTP clients send one. A malformed
    document behind it is still located on the line and column the store sees."""
    import json

    body = b"\xef\xbb\xbf" + json.dumps(ENVELOPE).encode()
    response = api.generic("POST", "/events", body, content_type="application/json")
    assert response.status_code == 202, response.content
    assert response.json()["message"] == "order:new"

    broken = api.generic("POST", "/events", b'\xef\xbb\xbf{"message": "order:new",}', content_type="application/json")
    assert broken.status_code == 400
    assert (broken.json()["line"], broken.json()["column"]) == (1, 24)  # the trailing comma


def test_event_detail_does_not_show_an_endpoints_url(api, subscriber):
    """Endpoints often take their own key in the query string, or (stored past the form) in the
    URL's userinfo; the store sees which subscription its event went to, by name, not where."""
    from routing.models import Delivery

    subscription = SubscriptionFactory(url=subscriber.url("/erp?api_key=erp-secret-123"), message_types=["order:*"])
    pushed = api.post("/events", ENVELOPE, format="json")
    [delivery] = Delivery.objects.filter(event__uid=pushed.json()["event_id"])
    assert pump_for(delivery.pk) == "delivered"
    assert subscriber.received("/erp")[0].path == "/erp"

    response = api.get(f"/events/{pushed.json()['event_id']}")
    text = response.content.decode()
    assert "erp-secret-123" not in text and "127.0.0.1" not in text and "/erp" not in text
    [shown] = response.json()["deliveries"]
    assert shown["subscription"] == subscription.name and "url" not in shown["attempts"][0]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=%C2%B2", "limit"),  # '²' passes str.isdigit() but not int()
        ("limit=%D9%A3", "limit"),  # an Arabic-Indic three
        ("resource_key=order:R1%00", "resource_key"),  # PostgreSQL refuses NUL in a parameter
    ],
)
def test_a_list_parameter_the_hub_cannot_use_is_400_naming_it_not_a_500(api, query, field):
    response = api.get(f"/events?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_filter"
    assert response.json()["field"] == field


@pytest.mark.parametrize("scheme", ["bearer", "augury"])
def test_x_hub_store_must_name_the_tokens_store_whichever_scheme_carries_the_token(scheme):
    """docs/protocol.md: 'When X-Hub-Store is sent it must name the token's store, else 401' — it
    was only checked beside X-Hub-Access-Token."""
    from rest_framework.test import APIClient

    from tests.factories import StoreFactory

    mine, other = StoreFactory(), StoreFactory()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {mine.token}"}
    token = bearer if scheme == "bearer" else {"HTTP_X_AUGURY_TOKEN": mine.token}
    client = APIClient()
    client.credentials(HTTP_X_HUB_STORE=other.name, **token)
    refused = client.post("/events", ENVELOPE, format="json")
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"

    client.credentials(HTTP_X_HUB_STORE=mine.name, **token)
    assert client.post("/events", ENVELOPE, format="json").status_code == 202
