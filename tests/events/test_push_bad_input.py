"""One test per bad input of PROTOCOL §1: the status, the JSON error shape, the field named, nothing stored."""

import json

import pytest
from rest_framework.test import APIClient

from events.models import Event
from tests.factories import StoreFactory

pytestmark = pytest.mark.django_db

ORDER = {"message": "order:new", "message_id": "m-1", "payload": {"order": {"number": "R1"}}}


def assert_error(response, status: int, error: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["detail"], str) and body["detail"]
    if field is not None:
        assert body["field"] == field
    assert Event.objects.count() == 0
    return body


def post_raw(client, raw: bytes | str, content_type: str = "application/json"):
    return client.post("/events", data=raw, content_type=content_type)


def test_malformed_json_is_400_with_line_and_column(api):
    body = assert_error(
        post_raw(api, '{"message": "order:new",\n "payload": {"a": 1,}}'), 400, "malformed_json", "body"
    )
    assert (body["line"], body["column"]) == (2, 20)


def test_truncated_json_is_400(api):
    assert_error(post_raw(api, '{"message": "order:new", "payload": {'), 400, "malformed_json", "body")


def test_invalid_utf8_is_400(api):
    assert_error(post_raw(api, b'{"message": "order:new", "payload": {"a": "\xff"}}'), 400, "malformed_json", "body")


def test_empty_body_is_400(api):
    assert_error(post_raw(api, b""), 400, "malformed_json", "body")


def test_json_nested_too_deep_is_400(api, settings):
    settings.HUB_MAX_JSON_DEPTH = 5
    deep = {"message": "order:new", "payload": {"a": {"b": {"c": {"d": {"e": 1}}}}}}
    assert_error(post_raw(api, json.dumps(deep)), 400, "too_deep", "body")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_wrong_content_type_is_415(api, content_type):
    assert_error(post_raw(api, json.dumps(ORDER), content_type), 415, "unsupported_media_type", "Content-Type")


def test_missing_content_type_is_415(api, store):
    response = APIClient().generic(
        "POST", "/events", data=json.dumps(ORDER), content_type="", HTTP_AUTHORIZATION=f"Bearer {store.token}"
    )
    assert_error(response, 415, "unsupported_media_type", "Content-Type")


def test_json_content_type_with_charset_is_accepted(api):
    assert post_raw(api, json.dumps(ORDER), "application/json; charset=utf-8").status_code == 202


def test_body_over_limit_is_413_before_parsing(api, settings):
    settings.HUB_MAX_BODY_BYTES = 200
    # Broken JSON: a 413 (not a 400) shows the body was refused before anyone parsed it.
    assert_error(post_raw(api, "{" + "x" * 300), 413, "body_too_large", "body")


def test_body_at_limit_is_accepted(api, settings):
    raw = json.dumps({**ORDER, "payload": {"pad": ""}})
    raw = raw.replace('"pad": ""', '"pad": "' + "x" * (300 - len(raw)) + '"')
    settings.HUB_MAX_BODY_BYTES = len(raw.encode())
    assert post_raw(api, raw).status_code == 202


def test_missing_message_is_422_naming_message(api):
    assert_error(api.post("/events", {"payload": {}}, format="json"), 422, "invalid_envelope", "message")


@pytest.mark.parametrize("message", ["order", "order:", ":new", "order new", "order:new:now", "ördér:new", "x" * 101])
def test_malformed_message_is_422_naming_message(api, message):
    response = api.post("/events", {"message": message, "payload": {}}, format="json")
    assert_error(response, 422, "invalid_envelope", "message")


@pytest.mark.parametrize("message", [123, None, ["order:new"], {"name": "order:new"}])
def test_message_not_a_string_is_422_naming_message(api, message):
    assert_error(
        api.post("/events", {"message": message, "payload": {}}, format="json"), 422, "invalid_envelope", "message"
    )


def test_missing_payload_is_422_naming_payload(api):
    assert_error(api.post("/events", {"message": "order:new"}, format="json"), 422, "invalid_envelope", "payload")


@pytest.mark.parametrize("payload", [[], "order", 12, None, True])
def test_payload_not_an_object_is_422_naming_payload(api, payload):
    response = api.post("/events", {"message": "order:new", "payload": payload}, format="json")
    assert_error(response, 422, "invalid_envelope", "payload")


@pytest.mark.parametrize("message_id", ["", "   ", "x" * 256, True, 1.5, {"id": 1}, ["a"]])
def test_bad_message_id_is_422_naming_message_id(api, message_id):
    response = api.post("/events", {**ORDER, "message_id": message_id}, format="json")
    assert_error(response, 422, "invalid_envelope", "message_id")


@pytest.mark.parametrize("document", ["order:new", 42, None])
def test_body_not_an_object_is_422(api, document):
    assert_error(post_raw(api, json.dumps(document)), 422, "invalid_envelope")


def test_missing_token_is_401(db):
    response = APIClient().post("/events", ORDER, format="json")
    assert_error(response, 401, "unauthorized")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_token_is_401(store):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {store.token}x")
    assert_error(client.post("/events", ORDER, format="json"), 401, "unauthorized")


def test_authorization_scheme_other_than_bearer_is_401(store):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {store.token}")
    assert_error(client.post("/events", ORDER, format="json"), 401, "unauthorized")


def test_wrong_legacy_token_is_401(store):
    client = APIClient()
    client.credentials(HTTP_X_HUB_STORE=store.name, HTTP_X_HUB_ACCESS_TOKEN="hub_not-the-token")
    assert_error(client.post("/events", ORDER, format="json"), 401, "unauthorized")


def test_legacy_store_header_naming_another_store_is_401(store):
    other = StoreFactory()
    client = APIClient()
    client.credentials(HTTP_X_HUB_STORE=other.name, HTTP_X_HUB_ACCESS_TOKEN=store.token)
    assert_error(client.post("/events", ORDER, format="json"), 401, "unauthorized")


def test_disabled_store_is_403(client_for):
    store = StoreFactory(is_active=False)
    assert_error(client_for(store).post("/events", ORDER, format="json"), 403, "forbidden")


def test_disabled_store_cannot_read_either(client_for):
    store = StoreFactory(is_active=False)
    assert_error(client_for(store).get("/events"), 403, "forbidden")


def test_token_is_checked_before_the_body(db):
    response = APIClient().post("/events", data="{broken", content_type="application/json")
    assert_error(response, 401, "unauthorized")


def test_unknown_event_id_is_404(api):
    assert_error(api.get("/events/5b0e8a52-4c8e-4bb4-9a55-0d0e2a1f4c11"), 404, "not_found", "event_id")


def test_event_id_that_is_not_a_uuid_is_404(api):
    assert_error(api.get("/events/not-an-id"), 404, "not_found", "event_id")


def test_wrong_method_is_405_in_json(api):
    assert_error(api.put("/events", ORDER, format="json"), 405, "method_not_allowed")
