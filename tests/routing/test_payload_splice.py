"""An envelope splices the payload's stored JSON text into its body instead of parsing it and
writing it again: the same bytes whenever the text is what the hub's writers store, else the
old path; the endpoint always gets the same JSON value, signed over exactly the bytes sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from events.models import Event, StoredPayload, payload_dumps
from routing.claim import batch_claim, subscription_read
from routing.formats import ENVELOPE, delivery_request, request_render
from routing.models import signing_secret_new
from routing.transport.request import json_object_spliceable
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory

SECRET = signing_secret_new()
FIELD = Event._meta.get_field("payload")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PARAMETERS = [{"name": "api_key", "value": "k-1"}, {"name": "since", "value": 3}, "not a parameter"]

# JSON values as stores send them: tiny and huge floats (spelled differently by orjson and
# json.dumps), integers beyond 64 bits, any text (escapes, non-ASCII, lone surrogates refused).
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e-7, 1e16, 1.5e-5, 0.00001, -2.5e300, 0.0, -0.0, 12345678901234567890])
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
)
_KEYS = st.text(st.characters(exclude_categories=["Cs"]), max_size=8) | st.sampled_from(["parameters", "order"])
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=20
)
_PAYLOADS = st.dictionaries(_KEYS, _VALUES, max_size=6)
# What writes a payload's column: the hub's writers (payload_dumps on PostgreSQL, json.dumps on
# SQLite) and others a row might have been written with.
_WRITERS = {
    "payload_dumps": lambda v: _text(payload_dumps(v)),
    "json compact": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    "json default": lambda v: json.dumps(v),
    "json compact ascii": lambda v: json.dumps(v, separators=(",", ":")),
}
HUB_WRITERS = ("payload_dumps", "json compact", "json default")


def _text(written: bytes | str) -> str:
    return written.decode() if isinstance(written, bytes) else written


def render(payload: Any) -> Any:
    return request_render(
        payload_format=ENVELOPE,
        url="https://erp.example/hub",
        message="order:new",
        message_id="R1",
        payload=payload,
        parameters=PARAMETERS,
        webhook_id="evt-1",
        signing_secret=SECRET,
        token="tok",
        store_name="shop",
    )


def verified(request: Any) -> Any:
    return Webhook(SECRET).verify(request.body, {k.lower(): v for k, v in request.headers.items()})


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, floats by value (-0.0 and 0.0 are the same number to a reader)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_PAYLOADS, writer=st.sampled_from(sorted(_WRITERS)))
def test_a_spliced_body_is_the_old_bytes_or_the_same_json_value_and_always_signed(payload, writer):
    text = _WRITERS[writer](payload)
    old = render(FIELD.from_db_value(text, None, None))
    new = render(StoredPayload(text, FIELD))
    if writer in HUB_WRITERS or not json_object_spliceable(text):
        assert new.body == old.body
    else:
        assert same_json(json.loads(new.body), json.loads(old.body))
    assert same_json(verified(new), json.loads(old.body))
    assert json.loads(new.body)["payload"]["parameters"] == [
        {"name": "api_key", "value": "k-1"},
        {"name": "since", "value": 3},
    ]


def _seed_payloads() -> list[tuple[str, dict]]:
    found = []
    for path in sorted([FIXTURES / "order_new.json", *(FIXTURES / "seeds").glob("*.json")]):
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # the seeds' blocks with `{ ... }` placeholders or trailing commas
        found.append((path.name, document.get("payload", document)))
    return found


@pytest.mark.parametrize(("name", "payload"), _seed_payloads(), ids=[n for n, _ in _seed_payloads()])
def test_the_seeds_as_stored_are_spliced_into_the_same_bytes(name, payload):
    text = _text(payload_dumps(payload))
    assert json_object_spliceable(text)
    new = render(StoredPayload(text, FIELD))
    assert new.body == render(payload).body
    verified(new)


@pytest.mark.parametrize(
    "text",
    [
        '{"order":{"number":"R1"},"parameters":{"a":1}}',  # merged into, in its place
        '{"order":{"number":"R1","weight":1e-7}}',  # orjson's spelling of a float json.dumps writes 1e-07
        '{"order":{"total":1e16}}',
        '{"order": {"number": "R1"}}',  # json.dumps' default spacing
        "[1,2]",
        '"text"',
        '{"order":{"note":"parameters"}}',  # the word as a value: refused by the same cheap search
    ],
    ids=["parameters key", "small float", "large float", "spaced", "array", "string", "parameters value"],
)
def test_what_a_splice_would_change_takes_the_old_path(text):
    assert not json_object_spliceable(text)
    value = FIELD.from_db_value(text, None, None)
    if isinstance(value, dict):
        assert render(StoredPayload(text, FIELD)).body == render(value).body


def test_an_empty_payload_is_spliced_as_the_parameters_alone():
    assert json_object_spliceable("{}")
    body = render(StoredPayload("{}", FIELD)).body
    assert body == render({}).body
    assert json.loads(body)["payload"] == {
        "parameters": [{"name": "api_key", "value": "k-1"}, {"name": "since", "value": 3}]
    }


def test_a_payload_rendered_again_is_checked_once_and_gives_the_same_bytes():
    # A fan-out renders one stored payload once per endpoint: the check is kept on it.
    spliced = StoredPayload('{"order":{"number":"R1"}}', FIELD)
    first = render(spliced).body
    assert spliced.spliceable is True
    assert render(spliced).body == first
    parsed = StoredPayload('{"order": {"number": "R1"}}', FIELD)
    again = render(parsed).body
    assert parsed.spliceable is False
    assert render(parsed).body == again == first


@pytest.mark.django_db
def test_a_claimed_event_is_sent_from_its_stored_text_and_parsed_only_when_read():
    payload = json.loads((FIXTURES / "order_new.json").read_text())["payload"]
    sub = SubscriptionFactory(max_in_flight=0, parameters=PARAMETERS[:2])
    delivery = DeliveryFactory(subscription=sub, event=EventFactory(payload=payload))
    batch = batch_claim(sub=subscription_read(sub.pk), budget=5)
    assert batch is not None
    [claimed] = batch.deliveries
    event = claimed.event
    if connection.vendor == "postgresql":
        # PostgreSQL's claim builds its rows itself (routing.rows); SQLite's reads them by the ORM.
        assert type(event.__dict__["payload"]) is StoredPayload
    fresh = Event.objects.get(pk=delivery.event_id)
    stamp = datetime(2026, 12, 2, tzinfo=UTC)
    sent = delivery_request(sub, event, store_name="shop", timestamp=stamp)
    assert sent.body == delivery_request(sub, fresh, store_name="shop", timestamp=stamp).body
    assert json.loads(sent.body)["payload"]["order"] == payload["order"]
    # Reading the payload parses it, once, and it stays a value the event can be saved with.
    assert event.payload == payload
    assert event.payload is event.payload
    event.payload = {"order": {"number": "R2"}}
    event.save(update_fields=["payload"])
    assert Event.objects.get(pk=event.pk).payload == {"order": {"number": "R2"}}


@pytest.mark.django_db
def test_a_deferred_payload_is_still_read_on_access():
    event = EventFactory(payload={"order": {"number": "R9"}})
    assert Event.objects.only("id").get(pk=event.pk).payload == {"order": {"number": "R9"}}


_PLAIN_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(min_value=1e-4, max_value=1e15)
    # The string "parameters" anywhere (a value too) is left to the parsed path, by design.
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=12).filter(lambda v: v != "parameters")
)
_PLAIN_KEYS = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8).filter(
    lambda k: k != "parameters"
)
_PLAIN = st.dictionaries(
    _PLAIN_KEYS,
    st.recursive(
        _PLAIN_SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_PLAIN_KEYS, inner, max_size=4),
        max_leaves=20,
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(payload=_PLAIN)
def test_a_payload_as_stores_send_them_is_spliced_as_stored_into_the_same_bytes(payload):
    text = _text(payload_dumps(payload))
    assert json_object_spliceable(text)
    new = render(StoredPayload(text, FIELD))
    assert new.body == render(payload).body
    verified(new)
