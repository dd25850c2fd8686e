"""How events are written to PostgreSQL: payloads travel apart from the INSERT statement, are
compressed by lz4 and kept in a json column; what is stored and read back is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from events import models
from events.models import Event

pytestmark = pytest.mark.django_db

SEED = json.loads((Path(__file__).parent.parent / "fixtures" / "seeds" / "001_order_new.json").read_text())


@pytest.fixture
def postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("TOAST compression and server-side parameters are PostgreSQL's")


def _envelope(number: int) -> dict:
    return {**SEED, "message_id": f"st-{number}"}


def _event_inserts(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "events_event"')]


def test_payload_column_is_json_compressed_by_lz4(postgresql):
    # json, not jsonb (events.0007), and the change of type kept events.0005's compression.
    assert _payload_column() == ("json", "l")


@pytest.mark.parametrize(("path", "count"), [("/events", 1), ("/events/batch", 3)])
def test_payloads_are_sent_apart_from_the_insert_and_read_back_as_pushed(postgresql, api, path, count):
    body = _envelope(0) if count == 1 else [_envelope(i) for i in range(count)]
    with CaptureQueriesContext(connection) as queries:
        response = api.post(path, body, format="json")
    assert response.status_code in (200, 202), response.content

    inserts = _event_inserts(queries)
    assert len(inserts) == 1
    # $n placeholders, not the payload quoted into the statement's text.
    assert "$1" in inserts[0] and SEED["payload"]["order"]["number"] not in inserts[0]
    stored = list(Event.objects.order_by("id"))
    assert [e.message_id for e in stored] == [f"st-{i}" for i in range(count)]
    assert all(e.payload == SEED["payload"] for e in stored)


def test_stored_payload_is_lz4_compressed_and_reads_back_whole(postgresql, api):
    response = api.post("/events", _envelope(1), format="json")
    assert response.status_code == 202
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_column_compression(payload), payload::text FROM events_event")
        method, text = cursor.fetchone()
    assert method == "lz4"
    assert json.loads(text) == SEED["payload"]


def test_a_repeated_batch_is_answered_with_the_first_events(postgresql, api):
    batch = [_envelope(i) for i in range(3)]
    first = api.post("/events/batch", batch, format="json").json()
    again = api.post("/events/batch", batch, format="json").json()
    assert (again["accepted"], again["duplicates"]) == (0, 3)
    assert [r["event_id"] for r in again["results"]] == [r["event_id"] for r in first["results"]]
    assert Event.objects.count() == 3


def test_the_insert_sends_the_json_validation_wrote(postgresql, api, monkeypatch):
    written_again: list[object] = []
    dumps = models.payload_dumps
    monkeypatch.setattr(models, "payload_dumps", lambda value: written_again.append(value) or dumps(value))

    response = api.post("/events/batch", [_envelope(i) for i in range(3)], format="json")
    assert response.json()["accepted"] == 3
    assert written_again == []  # each payload was written once, by the validation's NUL check
    assert [e.payload for e in Event.objects.all()] == [SEED["payload"]] * 3

    # What orjson does not write (an integer beyond 64 bits) is still written at the insert.
    big = {**_envelope(9), "payload": {"order": {"number": "R9", "id": 2**70}}}
    assert api.post("/events", big, format="json").status_code == 202
    assert len(written_again) == 1
    assert Event.objects.get(message_id="st-9").payload["order"]["id"] == 2**70


def _payload_column() -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT format_type(atttypid, atttypmod), attcompression FROM pg_attribute"
            " WHERE attrelid = 'events_event'::regclass AND attname = 'payload'"
        )
        return cursor.fetchone()


@pytest.mark.django_db(transaction=True)
def test_the_json_migration_keeps_stored_payloads_both_ways(postgresql, api):
    sent = {**_envelope(2), "payload": {"order": {"number": "R2", "total": "9.90", "id": 7}}}
    assert api.post("/events", sent, format="json").status_code == 202
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([("events", "0006_event_uid_uuid7")])
        assert _payload_column() == ("jsonb", "l")
        with connection.cursor() as cursor:
            cursor.execute("SELECT payload FROM events_event")
            # jsonb reorders keys (shorter first); the payload itself is unchanged.
            assert json.loads(cursor.fetchone()[0]) == sent["payload"]
    finally:
        executor.loader.build_graph()
        # Every app's latest: going back took with it the routing migrations that depend on events.
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert _payload_column() == ("json", "l")
    assert Event.objects.get(message_id="st-2").payload == sent["payload"]


def test_insert_texts_are_kept_for_recent_batch_sizes_only():
    from events import sql as events_sql

    events_sql.event_insert.cache_clear()
    first = events_sql.event_insert(connection.alias, 100, skip_conflicts=True)
    assert events_sql.event_insert(connection.alias, 100, skip_conflicts=True) is first
    for rows in range(1, 80):
        events_sql.event_insert(connection.alias, rows, skip_conflicts=True)
    assert events_sql.event_insert.cache_info().currsize == 64
    # The text itself: one row of placeholders per event, conflicts skipped.
    sql = first
    assert sql.count("(") - 1 == 100 and sql.endswith('ON CONFLICT DO NOTHING RETURNING "id", "message_id"')
    assert len(events_sql.event_insert_fields()) == len(Event._meta.concrete_fields) - 1
