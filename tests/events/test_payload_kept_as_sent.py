"""The payload is stored exactly as parsed, on SQLite and on PostgreSQL alike."""

import json

import pytest

from events.models import Event

pytestmark = pytest.mark.django_db


def push_raw(api, raw: str):
    return api.post("/events", data=raw, content_type="application/json")


def test_integers_beyond_64_bits_are_kept_exact(api):
    raw = '{"message": "order:new", "payload": {"id": 123456789012345678901234567890, "neg": -9223372036854775809}}'
    assert push_raw(api, raw).status_code == 202
    event = Event.objects.get()
    event.refresh_from_db()
    assert event.payload == {"id": 123456789012345678901234567890, "neg": -9223372036854775809}
    assert isinstance(event.payload["id"], int)


def test_unicode_dates_amounts_and_nulls_round_trip(api):
    payload = {
        "order": {
            "placed_on": "01/01/2013 12:34:22 UTC",
            "total": "114.95",
            "price": 19.99,
            "quantity": 3,
            "note": "Größe L — ✓ 😀",
            "gift": False,
            "coupon": None,
            "options": {},
            "tags": [],
        }
    }
    raw = json.dumps({"message": "order:new", "payload": payload}, ensure_ascii=False)
    assert push_raw(api, raw).status_code == 202
    event = Event.objects.get()
    event.refresh_from_db()
    assert event.payload == payload
    assert api.get(f"/events/{event.uid}").json()["payload"] == payload


def test_nul_character_in_payload_is_422_naming_where(api):
    response = push_raw(api, '{"message": "order:new", "payload": {"order": {"note": "a\\u0000b"}}}')
    assert response.status_code == 422
    assert response.json()["field"] == "payload"
    assert "payload.order.note" in response.json()["detail"]
    assert Event.objects.count() == 0


def test_nul_character_in_payload_key_is_422(api):
    response = push_raw(api, '{"message": "order:new", "payload": {"k\\u0000": 1}}')
    assert response.status_code == 422
    assert response.json()["field"] == "payload"


def test_backslash_u0000_as_text_is_not_a_nul_and_is_stored(api):
    # The JSON text "\\u0000" is a backslash followed by "u0000", which jsonb holds fine; the fast
    # NUL check sees the same six characters and must leave the verdict to the walk.
    response = push_raw(api, '{"message": "order:new", "payload": {"note": "C:\\\\u0000 path"}}')
    assert response.status_code == 202
    event = Event.objects.get()
    event.refresh_from_db()
    assert event.payload == {"note": "C:\\u0000 path"}


def test_nul_beside_an_integer_beyond_64_bits_is_422_naming_where(api):
    # orjson cannot write the big integer, so the NUL is found by the walk.
    raw = '{"message": "order:new", "payload": {"id": 123456789012345678901234567890, "lines": ["ok", "a\\u0000"]}}'
    response = push_raw(api, raw)
    assert response.status_code == 422
    assert "payload.lines.1" in response.json()["detail"]
    assert Event.objects.count() == 0


def test_nul_character_in_message_id_is_422(api):
    response = push_raw(api, '{"message": "order:new", "message_id": "a\\u0000b", "payload": {}}')
    assert response.status_code == 422
    assert response.json()["field"] == "message_id"
    assert Event.objects.count() == 0


def test_unknown_url_is_a_json_404(api):
    response = api.get("/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_payloads_read_back_exactly_whichever_json_reader_reads_them(api):
    """orjson reads payloads back, except text with a long run of digits (orjson would turn an
    integer beyond 64 bits into a float): both paths give what was sent."""
    payloads = [
        {"order": {"id": 999999999999999999, "total": 1e-7, "lines": [{"qty": -123456789012345678}]}},
        {"order": {"lines": [{"sku": "A", "big": [18446744073709551617, -9223372036854775809]}]}},
        {"order": {"ref": "1234567890123456789", "qty": 2}},  # 19 digits in a string: json.loads path
    ]
    for n, payload in enumerate(payloads):
        raw = json.dumps({"message": "order:new", "message_id": f"exact-{n}", "payload": payload})
        assert push_raw(api, raw).status_code == 202
        event = Event.objects.get(message_id=f"exact-{n}")
        assert event.payload == payload
        # ints stay ints, floats floats, and the keys keep the order they were sent in
        assert json.dumps(event.payload) == json.dumps(payload)
