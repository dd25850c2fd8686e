import io
import re

import pytest
import yaml
from django.contrib.staticfiles import finders
from django.core.management import call_command
from drf_spectacular.validation import validate_schema

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client) -> dict:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    return response.json()


def test_schema_is_public_and_valid_openapi(schema):
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")


MANAGE_PATHS = {
    "/manage/v1/stores": {"get", "post"},
    "/manage/v1/stores/{name}": {"get", "patch"},
    "/manage/v1/stores/{name}/enable": {"post"},
    "/manage/v1/stores/{name}/disable": {"post"},
    "/manage/v1/stores/{name}/rotate": {"post"},
    "/manage/v1/subscriptions": {"get", "post"},
    "/manage/v1/subscriptions/{name}": {"get", "patch"},
    "/manage/v1/subscriptions/{name}/enable": {"post"},
    "/manage/v1/subscriptions/{name}/disable": {"post"},
    "/manage/v1/subscriptions/{name}/rotate": {"post"},
    "/manage/v1/subscriptions/{name}/token": {"post"},
    "/manage/v1/subscriptions/{name}/test": {"post"},
    "/manage/v1/subscriptions/{name}/schedule": {"get", "put", "patch", "delete"},
    "/manage/v1/subscriptions/{name}/schedule/run": {"post"},
    "/manage/v1/deliveries/retry": {"post"},
    "/manage/v1/deliveries/cancel": {"post"},
    "/manage/v1/deliveries/replay": {"post"},
}


def test_schema_lists_the_store_api_the_management_api_and_nothing_else(schema):
    assert set(schema["paths"]) == {"/events", "/events/batch", "/events/{event_id}", *MANAGE_PATHS}
    for path, methods in MANAGE_PATHS.items():
        assert set(schema["paths"][path]) == methods, path
    assert set(schema["paths"]["/events"]) == {"get", "post"}
    assert set(schema["paths"]["/events/batch"]) == {"post"}
    assert set(schema["paths"]["/events/{event_id}"]) == {"get"}


def test_every_operation_uses_the_store_token_or_a_management_key(schema):
    assert schema["components"]["securitySchemes"]["storeToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["storeToken"]["description"],
    }
    assert schema["components"]["securitySchemes"]["managementKey"]["scheme"] == "bearer"
    for path, operations in schema["paths"].items():
        scheme = "managementKey" if path.startswith("/manage/") else "storeToken"
        for method, operation in operations.items():
            assert operation["security"] == [{scheme: []}], (path, method)


def test_management_operations_document_their_errors_and_secrets_only_where_shown_once(schema):
    for path, operations in MANAGE_PATHS.items():
        for method in operations:
            assert {"401", "403", "429"} <= set(schema["paths"][path][method]["responses"]), (path, method)
    created = _ref(
        schema, schema["paths"]["/manage/v1/subscriptions"]["post"]["responses"]["201"]["content"]["application/json"]
    )
    assert {"signing_secret", "token"} <= set(created["properties"])
    read = _ref(
        schema,
        schema["paths"]["/manage/v1/subscriptions/{name}"]["get"]["responses"]["200"]["content"]["application/json"],
    )
    assert not {"signing_secret", "token", "parameters"} & set(read["properties"])
    assert "parameter_names" in read["properties"]
    filter_body = _ref(
        schema, schema["paths"]["/manage/v1/deliveries/retry"]["post"]["requestBody"]["content"]["application/json"]
    )
    assert set(filter_body["properties"]) == {"subscription", "state", "since", "until", "message", "limit", "dry_run"}


def test_documented_management_replies_match_real_ones(schema):
    from rest_framework.test import APIClient

    from ops.models import ManagementKey

    key = ManagementKey(name="docs", scopes=["subscriptions:read", "subscriptions:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key.key_set_new()}")
    key.save()
    body = {"name": "erp", "url": "https://erp.example.com/hub", "message_types": ["*"]}
    created = client.post("/manage/v1/subscriptions", body, format="json")
    paths = schema["paths"]
    documented = _ref(
        schema, paths["/manage/v1/subscriptions"]["post"]["responses"]["201"]["content"]["application/json"]
    )
    assert set(created.json()) == set(documented["properties"])
    read = client.get("/manage/v1/subscriptions/erp")
    documented = _ref(
        schema, paths["/manage/v1/subscriptions/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
    )
    assert set(read.json()) == set(documented["properties"])


def _ref(schema: dict, holder: dict) -> dict:
    name = holder["schema"]["$ref"].rsplit("/", 1)[1]
    return schema["components"]["schemas"][name]


def test_push_documents_the_envelope_the_reply_and_the_errors(schema):
    push = schema["paths"]["/events"]["post"]
    envelope = _ref(schema, push["requestBody"]["content"]["application/json"])
    assert set(envelope["properties"]) == {"message", "message_id", "payload"}
    assert set(envelope["required"]) == {"message", "payload"}
    accepted = _ref(schema, push["responses"]["202"]["content"]["application/json"])
    assert set(accepted["properties"]) == {"event_id", "message", "message_id", "status", "duplicate"}
    assert {"200", "202", "400", "401", "403", "413", "415", "422", "429", "503"} <= set(push["responses"])
    error = _ref(schema, push["responses"]["422"]["content"]["application/json"])
    assert set(error["properties"]) == {"error", "detail", "field"}


def test_batch_list_and_detail_replies_are_described(schema):
    batch = schema["paths"]["/events/batch"]["post"]
    result = _ref(schema, batch["responses"]["200"]["content"]["application/json"])
    assert set(result["properties"]) == {"accepted", "duplicates", "rejected", "results"}
    listing = schema["paths"]["/events"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "message",
        "status",
        "since",
        "resource_key",
        "limit",
        "cursor",
    }
    page = _ref(schema, listing["responses"]["200"]["content"]["application/json"])
    assert set(page["properties"]) == {"next", "previous", "results"}
    detail = _ref(
        schema, schema["paths"]["/events/{event_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    )
    assert {"payload", "deliveries", "notifications", "parent_event_id", "event_id"} <= set(detail["properties"])


def test_documented_reply_matches_a_real_push(schema, api):
    response = api.post("/events", {"message": "order:new", "payload": {"order": {"number": "R7"}}}, format="json")
    documented = _ref(schema, schema["paths"]["/events"]["post"]["responses"]["202"]["content"]["application/json"])
    assert set(response.json()) == set(documented["properties"])
    detail = api.get(response["Location"]).json()
    documented = _ref(
        schema, schema["paths"]["/events/{event_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    )
    assert set(detail) == set(documented["properties"])


def test_schema_generates_without_warnings():
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    assert yaml.safe_load(out.getvalue())["info"]["title"] == "Event hub API"


def test_docs_page_renders_without_a_token(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger" in html.lower() and "/api/schema/" in html


def test_docs_page_loads_swagger_ui_from_our_own_static_files(client):
    # Operators often run the hub where the internet (and so a CDN) is out of reach.
    html = client.get("/api/docs/").content.decode()
    scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert scripts, html
    for url in scripts:
        assert url.startswith("/static/"), url
        assert finders.find(url.removeprefix("/static/")), f"{url} is not a static file of ours"


def test_the_detail_schema_describes_exactly_what_a_store_is_shown(schema, api):
    """The documented delivery and attempt shapes are the ones the API answers, and neither has a
    place for an endpoint's URL, reply or error text (tests/security/test_store_view.py)."""
    from routing.models import Attempt, Delivery
    from tests.factories import SubscriptionFactory

    SubscriptionFactory(message_types=["order:new"])
    event_id = api.post("/events", {"message": "order:new", "payload": {}}, format="json").json()["event_id"]
    Attempt.objects.create(delivery=Delivery.objects.get(event__uid=event_id), number=1, status_code=503)
    [delivery] = api.get(f"/events/{event_id}").json()["deliveries"]
    components = schema["components"]["schemas"]
    assert set(components["Delivery"]["properties"]) == set(delivery)
    assert set(components["Attempt"]["properties"]) == set(delivery["attempts"][0])
    assert not {"url", "response_body", "response_headers", "error"} & set(components["Attempt"]["properties"])
