"""GET /schemas and GET /schemas/<message> publish the standard description, without a token; the
OpenAPI document carries the same schemas as components."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from events.conformance import schema_document

pytestmark = pytest.mark.django_db


def test_the_list_names_each_schema_its_messages_and_where_it_is(client):
    response = client.get("/schemas")
    assert response.status_code == 200
    schemas = {s["name"]: s for s in response.json()["schemas"]}
    assert set(schemas) == {"order", "shipment", "product", "user", "payment"}
    assert schemas["order"]["messages"] == ["order:canceled", "order:new", "order:updated"]
    assert schemas["shipment"]["messages"] == ["shipment:confirm", "shipment:ready"]
    assert schemas["order"]["url"] == "http://testserver/schemas/order"


@pytest.mark.parametrize("asked", ["order", "order:new", "order:cancel", "ORDER:UPDATED"])
def test_a_message_or_its_resource_gives_the_resource_s_schema(client, asked):
    response = client.get(f"/schemas/{asked}")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/schema+json"
    assert "public" in response["Cache-Control"]
    document = response.json()
    Draft202012Validator.check_schema(document)
    assert document["$id"] == "http://testserver/schemas/order"
    assert {k: v for k, v in document.items() if k != "$id"} == schema_document("order")


def test_a_message_without_a_schema_is_a_json_404(client):
    response = client.get("/schemas/stock:change")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found" and response.json()["field"] == "message"


def test_only_reading_is_allowed(client):
    assert client.post("/schemas/order", {}, content_type="application/json").status_code == 405


def test_the_openapi_document_carries_the_message_schemas(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    components = schema["components"]["schemas"]
    assert components["MessageOrder"]["required"] == ["order"]
    assert components["MessageOrder"]["properties"]["order"] == {"$ref": "#/components/schemas/MessageDef_order"}
    assert "MessageDef_line_item" in components
