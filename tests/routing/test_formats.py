"""Each payload format's request: body, headers, method, path and signature; no database."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from routing.formats import (
    RenderFailed,
    flat_body,
    object_key,
    path_for,
    paths_validate,
    request_render,
    url_with_path,
)
from routing.models import signing_secret_new
from routing.transport.request import request_build

SECRET = signing_secret_new()
ORDER = {"order": {"number": "R1", "email": "a@example.com"}}
PARAMETERS = [{"name": "api_key", "value": "k1"}, {"name": "store_id", "value": 7}]


def render(payload_format: str, message: str = "order:new", **kwargs):
    values = {
        "payload_format": payload_format,
        "url": "http://erp.example/hub",
        "message": message,
        "message_id": "m-1",
        "payload": ORDER,
        "parameters": PARAMETERS,
        "webhook_id": "evt-1",
        "signing_secret": SECRET,
        "token": "endpoint-key",
        "store_name": "shop",
        "timestamp": datetime.now(UTC),
        **kwargs,
    }
    return request_render(**values)


def verified(request) -> object:
    return Webhook(SECRET).verify(request.body, {k.lower(): v for k, v in request.headers.items()})


def test_envelope_is_todays_request_byte_for_byte():
    when = datetime.now(UTC)
    request = render("envelope", timestamp=when)
    assert request == request_build(
        url="http://erp.example/hub",
        message="order:new",
        message_id="m-1",
        payload=ORDER,
        parameters=PARAMETERS,
        webhook_id="evt-1",
        signing_secret=SECRET,
        token="endpoint-key",
        store_name="shop",
        timestamp=when,
    )
    assert render("envelope", "order:updated").method == "PUT"


def test_flat_body_headers_method_and_path():
    request = render("flat", "order:updated")
    assert verified(request) == {
        "request_id": "m-1",
        "order": {"number": "R1", "email": "a@example.com"},
        "parameters": {"api_key": "k1", "store_id": 7},
    }
    # endpoint_base reads a body and checks the key on POST only.
    assert request.method == "POST"
    assert request.url == "http://erp.example/hub/update_order"
    assert request.headers["X-Hub-Token"] == "endpoint-key"
    assert request.headers["X-Hub-Store"] == "shop"
    assert "X-Augury-Token" not in request.headers
    assert render("flat", "order:new", method_override="PUT").method == "PUT"


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ("order:new", "/add_order"),
        ("order:updated", "/update_order"),
        ("order:canceled", "/cancel_order"),
        ("shipment:ready", "/add_shipment"),
        ("shipment:confirm", "/update_shipment"),
        ("product:new", "/add_product"),
        ("stock:change", "/change_stock"),
        ("get_orders", "/get_orders"),
    ],
)
def test_flat_default_paths_are_the_endpoint_base_routes(message, path):
    assert path_for(message, {}, "flat") == path


def test_paths_of_the_subscription_come_first_exact_then_resource_then_all():
    paths = {"order:new": "/orders/create", "order:*": "/orders/{action}", "*": "/hub/{verb}_{resource}"}
    assert path_for("order:new", paths, "envelope") == "/orders/create"
    assert path_for("order:updated", paths, "envelope") == "/orders/updated"
    assert path_for("shipment:ready", paths, "envelope") == "/hub/add_shipment"
    # An alias in the map stands for its canonical message; "" keeps the URL as it is.
    assert path_for("order:updated", {"order:update": "/u"}, "flat") == "/u"
    assert path_for("order:new", {"*": ""}, "flat") == ""
    assert path_for("order:new", {}, "envelope") == ""


def test_url_with_path_keeps_the_query_and_joins_slashes():
    assert url_with_path("http://erp.example/hub/?k=1", "/add_order") == "http://erp.example/hub/add_order?k=1"
    assert url_with_path("http://erp.example", "/add_order") == "http://erp.example/add_order"
    assert url_with_path("http://erp.example/x", "") == "http://erp.example/x"


@pytest.mark.parametrize(
    ("paths", "problem"),
    [
        ([], "must be an object"),
        ({"order new": "/x"}, "not a message name"),
        ({"order:new": 3}, "must be a string"),
        ({"order:new": "http://evil.example/x"}, "path under the subscription's URL"),
        ({"order:new": "//evil.example/x"}, "path under the subscription's URL"),
        ({"order:new": "/a/../../admin"}, "path under the subscription's URL"),
        ({"order:new": "/x?y=1"}, "path under the subscription's URL"),
        ({"order:new": "/{host}"}, "uses {host}"),
    ],
)
def test_paths_are_refused_with_a_sentence(paths, problem):
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}").replace("?", r"\?")):
        paths_validate(paths)


def test_paths_accepted():
    paths_validate({"order:new": "/add_order", "order:*": "/{verb}_order", "*": ""})
    paths_validate(None)


def test_flat_object_key_from_the_payload():
    assert object_key("order:new", ORDER) == "order"
    # The only object in the payload, whatever its name.
    assert object_key("user:new", {"customer": {"id": 1}}) == "customer"
    # A payload that is the object itself goes under the resource's name.
    body = flat_body(message="stock:change", message_id="m", payload={"sku": "A", "quantity": 3}, parameters=[])
    assert body == {"request_id": "m", "stock": {"sku": "A", "quantity": 3}, "parameters": {}}
    # The payload's other keys ride along; its own request_id or parameters never replace the hub's.
    body = flat_body(
        message="order:new",
        message_id="m",
        payload={"order": {"n": 1}, "original": {"n": 0}, "parameters": [1], "request_id": "x"},
        parameters=[],
    )
    assert body == {"request_id": "m", "order": {"n": 1}, "original": {"n": 0}, "parameters": {}}


def test_a_pull_goes_flat_as_request_id_and_parameters_only():
    body = flat_body(message="get_orders", message_id="t", payload={}, parameters=[{"name": "since", "value": "x"}])
    assert body == {"request_id": "t", "parameters": {"since": "x"}}


def test_transform_body_is_exactly_the_mapped_document_and_is_signed():
    expression = '{"id": payload.order.number, "key": parameters.api_key, "kind": message, "shop": store}'
    request = render("transform", transform=expression, paths={"order:*": "/orders"})
    assert json.loads(request.body) == {"id": "R1", "key": "k1", "kind": "order:new", "shop": "shop"}
    assert verified(request) == json.loads(request.body)
    assert request.url == "http://erp.example/hub/orders"
    assert request.headers["X-Hub-Token"] == "endpoint-key"


def test_a_failed_mapping_is_a_permanent_failed_attempt_naming_where():
    with pytest.raises(RenderFailed) as caught:
        render("transform", "order:updated", transform="$sum(payload.order.number)")
    result = caught.value.exchange_result()
    assert result.permanent and not result.succeeded
    assert result.status_code is None
    assert result.method == "PUT"
    assert result.url == "http://erp.example/hub"
    assert result.error.startswith("the transform failed at character")


def test_rotation_grace_signs_every_format_with_both_secrets():
    previous = signing_secret_new()
    for payload_format in ("envelope", "flat", "transform"):
        request = render(payload_format, transform="payload", previous_signing_secret=previous)
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert len(headers["webhook-signature"].split(" ")) == 2
        Webhook(previous).verify(request.body, headers)
        Webhook(SECRET).verify(request.body, headers)


def test_delivery_request_renders_the_parameters_a_batch_carries_on():
    from types import SimpleNamespace

    from routing.formats import delivery_request

    sub = SimpleNamespace(
        payload_format="flat",
        url="http://erp.example/hub",
        parameters=[{"name": "api_key", "value": "k1"}],
        signing_secret=SECRET,
        token="t",
        http_method="",
        paths={},
        transform="",
    )
    event = SimpleNamespace(message="order:new", message_id="m-1", payload=ORDER, uid="evt-1")
    request = delivery_request(sub, event, store_name="shop")
    assert json.loads(request.body)["parameters"] == {"api_key": "k1"}
    carried = [*sub.parameters, {"name": "last_sync", "value": "x"}]
    request = delivery_request(sub, event, store_name="shop", parameters=carried)
    assert json.loads(request.body)["parameters"] == {"api_key": "k1", "last_sync": "x"}
