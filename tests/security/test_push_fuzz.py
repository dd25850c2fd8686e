"""Property-based fuzzing of POST /events and /events/batch: whatever arrives, the hub answers
below 500 in its JSON error shape, and whatever it stores is a valid event of the pushing store."""

import json

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from events.messages import message_canonical
from events.models import Event
from events.validation import envelope_validate

pytestmark = pytest.mark.django_db

MAX_BODY = 4096

# Header values as a WSGI server hands them over: latin-1, no control characters.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=60)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=40,
)
messages = st.sampled_from(
    [
        "order:new",
        "order:update",
        "order:cancelled",
        "shipment:confirmation",
        "stock:change",
        "Order:New",
        "order",
        ":",
        "a:b:c",
    ]
) | st.text(max_size=40)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "message": messages | json_values,
        "message_id": st.text(max_size=300) | st.integers() | json_values,
        "payload": st.dictionaries(st.text(max_size=10), json_values, max_size=6) | json_values,
    },
)

valid_envelopes = st.fixed_dictionaries(
    {
        "message": st.sampled_from(["order:new", "order:update", "order:canceled", "product:new", "stock:change"]),
        "payload": st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    },
    optional={"message_id": st.text(min_size=1, max_size=12)},
)


def _dumps(value) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    valid_envelopes.map(_dumps),
    valid_envelopes.map(_dumps),
    st.lists(valid_envelopes | envelopes, min_size=1, max_size=4).map(_dumps),
    envelopes.map(_dumps),
    st.lists(envelopes, max_size=4).map(_dumps),
    st.fixed_dictionaries({"events": st.lists(envelopes, max_size=3)}).map(_dumps),
    json_values.map(_dumps),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    # Almost JSON: the seeds' trailing commas and ellipses, truncated documents.
    envelopes.map(lambda e: _dumps(e)[:-1] + b",}"),
    envelopes.map(lambda e: _dumps(e)[: len(_dumps(e)) // 2]),
    st.integers(MAX_BODY - 50, MAX_BODY * 3).map(
        lambda n: b'{"message": "order:new", "payload": {"x": "' + b"y" * n + b'"}}'
    ),
    st.integers(1, 200).map(lambda n: b'{"message": "order:new", "payload": ' + b"[" * n + b"]" * n + b"}"),
    st.text(max_size=20).map(lambda t: _dumps({"message": "order:new", "payload": {"t": "a\x00" + t}})),
)
content_types = st.sampled_from(
    ["application/json"] * 6
    + [
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "",
        "random",
    ]
).flatmap(lambda c: header_text if c == "random" else st.just(c))


def _auth_headers(store, choice: str, garbage: str) -> dict[str, str]:
    return {
        "bearer": {"HTTP_AUTHORIZATION": f"Bearer {store.token}"},
        "legacy": {"HTTP_X_HUB_STORE": store.name, "HTTP_X_HUB_ACCESS_TOKEN": store.token},
        "legacy_wrong_store": {"HTTP_X_HUB_STORE": garbage, "HTTP_X_HUB_ACCESS_TOKEN": store.token},
        "augury": {"HTTP_X_AUGURY_TOKEN": store.token},
        "garbage_bearer": {"HTTP_AUTHORIZATION": f"Bearer {garbage}"},
        "garbage_scheme": {"HTTP_AUTHORIZATION": garbage},
        "none": {},
    }[choice]


auth_choices = st.sampled_from(
    ["bearer", "bearer", "bearer", "legacy", "legacy_wrong_store", "augury", "garbage_bearer", "garbage_scheme", "none"]
)


@pytest.fixture
def fuzz_settings(settings):
    settings.HUB_MAX_BODY_BYTES = MAX_BODY
    settings.HUB_MAX_JSON_DEPTH = 16
    settings.HUB_MAX_JSON_KEYS = 200
    settings.HUB_RATE_LIMITS = {"store_write": "1000000/minute", "store_read": "1000000/minute"}


def _assert_error_shape(response) -> None:
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body


def _assert_stored_events_valid(store) -> None:
    for stored in Event.objects.all():
        assert stored.store_id == store.pk
        assert message_canonical(stored.message) == stored.message
        envelope = envelope_validate(
            {"message": stored.message, "message_id": stored.message_id, "payload": stored.payload}
        )
        assert envelope.payload == stored.payload
        assert 0 < len(stored.message_id) <= 255


@hypothesis_settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    path=st.sampled_from(["/events", "/events/batch"]),
    body=bodies,
    content_type=content_types,
    auth=auth_choices,
    garbage=header_text,
    extra_header=header_text,
)
def test_push_never_fails_with_5xx_and_stores_only_valid_events(
    fuzz_settings, store, path, body, content_type, auth, garbage, extra_header
):
    client = APIClient()
    before = Event.objects.count()
    response = client.generic(
        "POST",
        path,
        body,
        content_type=content_type,
        HTTP_X_REQUEST_NOTE=extra_header,
        **_auth_headers(store, auth, garbage),
    )
    assert response.status_code < 500, response.content
    assert response["Content-Type"].startswith("application/json")
    created = Event.objects.count() - before
    reply = response.json()
    event(f"{path} -> {response.status_code} {reply.get('error', '') if isinstance(reply, dict) else ''}")
    if isinstance(reply, dict) and "results" in reply:
        assert response.status_code == 200
        assert created == reply["accepted"]
        assert len(reply["results"]) == reply["accepted"] + reply["duplicates"] + reply["rejected"]
        assert all(item["status_code"] < 500 for item in reply["results"])
    elif response.status_code == 202:
        assert created == 1
    else:
        assert created == 0, response.content
        if response.status_code >= 400:
            _assert_error_shape(response)
    _assert_stored_events_valid(store)
