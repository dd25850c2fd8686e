"""The standard description (events.conformance): the seeds' valid samples conform, a departure is
named by its JSON path in the pushed envelope, the number listed is capped, and every published
document stands on its own, for JSON Schema and for OpenAPI 3.0."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from events.conformance import (
    departures_text,
    openapi_components,
    payload_departures,
    schema_document,
    schema_name_for,
    schema_names,
)

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seeds"
VALID_SEEDS = ["001_order_new", "003_order_new", "003_order_update", "003_order_cancel"]


def _seed(name: str) -> dict:
    return json.loads((SEEDS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", VALID_SEEDS)
def test_the_seeds_samples_conform_string_amounts_and_odd_dates_included(name):
    envelope = _seed(name)
    assert payload_departures(envelope["message"], envelope["payload"], limit=10) is None


def test_seed_003_is_what_the_schema_is_lenient_about():
    order = _seed("003_order_new")["payload"]["order"]
    assert order["placed_on"] == "01/01/2013 12:34:22 UTC"
    assert order["adjustments"][0]["value"] == "-4.99"
    assert "number" not in order


def test_a_departure_is_named_by_its_json_path_in_the_envelope():
    payload = copy.deepcopy(_seed("001_order_new")["payload"])
    payload["order"]["totals"]["order"] = "a lot"
    payload["order"]["line_items"][1]["quantity"] = "3"
    del payload["order"]["shipping_address"]["city"]

    departures = payload_departures("order:new", payload, limit=10)

    assert departures is not None and departures.schema == "order" and not departures.more
    assert {(d.path, d.detail) for d in departures.found} == {
        ("$.payload.order.totals.order", '"a lot" does not match ^\\s*-?[0-9]+(\\.[0-9]+)?\\s*$'),
        ("$.payload.order.line_items[1].quantity", "is a string; the schema wants integer"),
        ("$.payload.order.shipping_address", "'city' is a required property"),
    }


def test_a_missing_resource_and_a_departure_inside_an_allof_are_named_where_they_are():
    assert payload_departures("order:new", {"number": "R1"}, limit=5).found[0].path == "$.payload"
    shipment = {"shipment": {"number": "H1", "cost": [], "order_number": "R1"}}
    (found,) = payload_departures("shipment:confirm", shipment, limit=5).found
    assert (found.path, found.detail) == ("$.payload.shipment.cost", "is an array; the schema wants number or string")


def test_the_departures_listed_are_capped_and_the_rest_said_to_exist():
    payload = {"order": {"line_items": [{"sku": n, "quantity": 1} for n in range(30)]}}
    departures = payload_departures("order:new", payload, limit=3)
    assert [d.path for d in departures.found] == [f"$.payload.order.line_items[{n}].sku" for n in range(3)]
    assert departures.more
    subject, description = departures_text(departures)
    assert subject == "Departs from the order schema at $.payload.order.line_items[0].sku"
    assert "More departures not listed" in description and "/schemas/order" in description


def test_a_huge_value_is_not_quoted_whole():
    payload = {"order": {"totals": {"order": "x" * 5000}}}
    (found,) = payload_departures("order:new", payload, limit=5).found
    assert len(found.detail) < 200


@pytest.mark.parametrize(
    ("message", "name"),
    [
        ("order:new", "order"),
        ("order:cancel", "order"),
        ("order", "order"),
        ("shipment:confirm", "shipment"),
        ("payment:ready", "payment"),
        ("product:updated", "product"),
        ("user:new", "user"),
        ("stock:change", None),
        ("Not a name!", None),
    ],
)
def test_which_schema_describes_a_message(message, name):
    assert schema_name_for(message) == name


def test_a_message_without_a_schema_is_not_checked():
    assert payload_departures("stock:change", {"anything": 1}, limit=5) is None


def test_the_five_canonical_resources_each_have_a_document_that_stands_on_its_own():
    assert schema_names() == ["order", "payment", "product", "shipment", "user"]
    for name in schema_names():
        document = schema_document(name)
        Draft202012Validator.check_schema(document)
        text = json.dumps(document)
        for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
            assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in document["$defs"], (name, ref)
        # The document's own validator finds what the checker finds.
        assert Draft202012Validator(document).is_valid({name: {}}) == (
            payload_departures(f"{name}:new", {name: {}}, limit=5) is None
        )


def test_the_documents_are_copies():
    schema_document("order")["title"] = "changed"
    assert schema_document("order")["title"] == "Order message payload"


def test_the_openapi_components_speak_openapi_3_0():
    components = openapi_components()
    assert {"MessageOrder", "MessageShipment", "MessageProduct", "MessageUser", "MessagePayment"} <= set(components)
    text = json.dumps(components)
    assert "$defs" not in text and '"null"' not in text
    refs = {part.split('"')[0] for part in text.split('"$ref": "')[1:]}
    assert refs and all(r.removeprefix("#/components/schemas/") in components for r in refs)

    def types(node):
        if isinstance(node, dict):
            if "type" in node:
                yield node["type"]
            for value in node.values():
                yield from types(value)
        elif isinstance(node, list):
            for value in node:
                yield from types(value)

    assert all(isinstance(kind, str) for kind in types(components))
    amount = components["MessageDef_amount"]
    assert amount["anyOf"] == [{"type": "number"}, {"type": "string", "pattern": amount["anyOf"][1]["pattern"]}]
    timestamp = components["MessageDef_timestamp"]
    assert (timestamp["type"], timestamp["nullable"]) == ("string", True)


def _variants() -> list[tuple[str, object]]:
    """Payloads that conform and payloads that depart in one place each, for every resource."""
    order = _seed("001_order_new")["payload"]
    cases: list[tuple[str, object]] = [("order", order), ("order", _seed("003_order_new")["payload"])]
    for path, value in [
        (("order", "totals", "order"), "a lot"),
        (("order", "line_items", 1, "quantity"), "3"),
        (("order", "line_items"), {}),
        (("order", "shipping_address"), None),
        (("order",), []),
    ]:
        payload = copy.deepcopy(order)
        node = payload
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        cases.append(("order", payload))
    cases += [
        ("order", {}),
        ("shipment", {"shipment": {"number": "H1", "cost": [], "order_number": "R1"}}),
        ("shipment", {"shipment": {"number": "H1", "cost": "1.00", "order_number": "R1"}}),
        ("product", {"product": {"id": 1, "name": "Tee", "price": "x"}}),
        ("user", {"user": {"email": 5}}),
        ("payment", {"payment": {"amount": {}}}),
    ]
    return cases


@pytest.mark.parametrize(("name", "payload"), _variants())
def test_the_compiled_check_and_jsonschema_agree_on_what_conforms(name, payload):
    from events.conformance import _conforming, _validator

    assert _conforming(name, payload) == (next(_validator(name).iter_errors(payload), None) is None)
