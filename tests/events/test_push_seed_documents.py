"""Every JSON block of seeds/001, 003 and 004, copied verbatim into tests/fixtures/seeds/, pushed as is."""

import json
from pathlib import Path

import pytest

from events.models import Event

pytestmark = pytest.mark.django_db

SEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "seeds"

# file -> the message name the hub must store (seeds/003 spells update/cancel the old way)
VALID = {
    "001_order_new.json": "order:new",
    "003_order_new.json": "order:new",
    "003_order_update.json": "order:updated",
    "003_order_cancel.json": "order:canceled",
}

# file -> (line, column) of the first character the JSON grammar refuses, found by reading the file:
# `{ ... }` placeholders in seeds/001, the trailing comma after "line_items": [...] in seeds/004.
BROKEN = {
    "001_order_updated.json": (4, 16),  # "order": { ... },  -> the first '.'
    "001_order_canceled.json": (5, 5),  #     ...             -> the first '.'
    "004_order_new.json": (45, 10),  #         ],          -> the trailing ','
    "004_order_updated.json": (45, 10),
    "004_order_canceled.json": (45, 10),
}


def test_every_seed_block_is_covered():
    assert sorted(p.name for p in SEEDS.glob("*.json")) == sorted([*VALID, *BROKEN])


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_seed_document_is_accepted_and_stored_as_sent(api, name):
    raw = (SEEDS / name).read_bytes()
    document = json.loads(raw)

    response = api.post("/events", data=raw, content_type="application/json")

    assert response.status_code == 202, response.content
    event = Event.objects.get()
    body = response.json()
    assert body["event_id"] == str(event.uid)
    assert body["message"] == VALID[name] == event.message
    assert response["Location"] == f"/events/{event.uid}"
    event.refresh_from_db()
    assert event.payload == document["payload"]
    # the seeds carry no message_id: the hub made one, and reports it
    assert event.message_id and body["message_id"] == event.message_id

    shown = api.get(f"/events/{event.uid}").json()
    assert shown["payload"] == document["payload"]
    assert shown["message"] == VALID[name]


def test_seed_003_dates_and_string_amounts_are_kept_as_sent(api):
    raw = (SEEDS / "003_order_new.json").read_bytes()
    assert api.post("/events", data=raw, content_type="application/json").status_code == 202
    order = Event.objects.get().payload["order"]
    assert order["placed_on"] == "01/01/2013 12:34:22 UTC"
    assert order["updated_at"] == "01/01/2013 12:34:22 UTC"
    assert [a["value"] for a in order["adjustments"]] == ["-4.99", "-3.00"]
    assert order["totals"]["order"] == 29.99


def test_seed_001_string_amounts_and_nulls_are_kept_as_sent(api):
    raw = (SEEDS / "001_order_new.json").read_bytes()
    assert api.post("/events", data=raw, content_type="application/json").status_code == 202
    event = Event.objects.get()
    original = event.payload["original"]
    assert original["item_total"] == "99.95"
    assert original["special_instructions"] is None
    assert event.payload["order"]["placed_on"] == "2013-07-30T19:19:05Z"
    assert event.resource_key == "order:R104702249"


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_seed_document_gets_400_naming_line_and_column(api, name):
    raw = (SEEDS / name).read_bytes()
    line, column = BROKEN[name]

    response = api.post("/events", data=raw, content_type="application/json")

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "malformed_json"
    assert body["field"] == "body"
    assert (body["line"], body["column"]) == (line, column)
    assert f"line {line}, column {column}" in body["detail"]
    assert Event.objects.count() == 0
