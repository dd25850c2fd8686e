"""POST /events/batch and a JSON array to POST /events: one result per item, each on its own."""

import json

import pytest

from events.models import Event

pytestmark = pytest.mark.django_db

GOOD = {"message": "order:new", "message_id": "b-1", "payload": {"order": {"number": "R1"}}}


def mixed_batch() -> list:
    return [
        GOOD,
        {"message": "order:update", "message_id": "b-2", "payload": {"order": {"number": "R1"}}},
        {"message": "not a name", "payload": {}},
        {"message": "order:new", "payload": []},
        "just a string",
        GOOD,  # the same message_id again, inside one batch
    ]


@pytest.mark.parametrize("path", ["/events/batch", "/events"])
def test_batch_accepts_and_rejects_each_item_on_its_own(api, path):
    response = api.post(path, mixed_batch(), format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 3)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["status_code"] for r in results] == [202, 202, 422, 422, 422, 200]
    assert results[1]["message"] == "order:updated"
    assert results[2]["error"] == "invalid_envelope" and results[2]["field"] == "message"
    assert results[3]["field"] == "payload"
    assert results[5]["event_id"] == results[0]["event_id"] and results[5]["duplicate"] is True
    assert sorted(Event.objects.values_list("message_id", flat=True)) == ["b-1", "b-2"]


def test_batch_may_be_an_object_with_events(api):
    response = api.post("/events/batch", {"events": [GOOD]}, format="json")
    assert response.status_code == 200
    assert response.json()["results"][0]["event_id"] == str(Event.objects.get().uid)


def test_batch_over_the_limit_is_413_and_stores_nothing(api, settings):
    settings.HUB_MAX_BATCH_SIZE = 3
    items = [{**GOOD, "message_id": f"b-{i}"} for i in range(4)]
    for path in ("/events/batch", "/events"):
        response = api.post(path, items, format="json")
        assert response.status_code == 413
        assert response.json()["error"] == "batch_too_large"
        assert response.json()["field"] == "events"
    assert Event.objects.count() == 0


def test_batch_at_the_limit_is_accepted(api, settings):
    settings.HUB_MAX_BATCH_SIZE = 3
    items = [{**GOOD, "message_id": f"b-{i}"} for i in range(3)]
    assert api.post("/events/batch", items, format="json").json()["accepted"] == 3


def test_batch_body_over_the_byte_limit_is_413(api, settings):
    settings.HUB_MAX_BODY_BYTES = 500
    items = [{**GOOD, "message_id": f"b-{i}"} for i in range(20)]
    response = api.post("/events/batch", data=json.dumps(items), content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_empty_batch_is_422(api):
    response = api.post("/events/batch", [], format="json")
    assert response.status_code == 422
    assert response.json()["field"] == "events"


def test_batch_that_is_not_an_array_is_422(api):
    response = api.post("/events/batch", GOOD, format="json")
    assert response.status_code == 422
    assert response.json()["field"] == "events"


def test_malformed_batch_json_is_400_with_line_and_column(api):
    response = api.post("/events/batch", data='[{"message": "order:new",}]', content_type="application/json")
    assert response.status_code == 400
    assert (response.json()["line"], response.json()["column"]) == (1, 25)  # the trailing comma


@pytest.mark.django_db(transaction=True)
def test_batch_is_stored_in_one_transaction(api):
    """One durable commit for the whole batch: each envelope still succeeds or fails on its own."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = api.post("/events/batch", mixed_batch(), format="json")

    assert response.status_code == 200, response.content
    assert (response.json()["accepted"], response.json()["duplicates"]) == (2, 1)
    commits = [q["sql"] for q in queries.captured_queries if q["sql"].upper().startswith("COMMIT")]
    assert len(commits) == 1
    assert sorted(Event.objects.values_list("message_id", flat=True)) == ["b-1", "b-2"]


@pytest.mark.django_db(transaction=True)
def test_a_large_body_waits_for_a_batch_slot_and_a_single_push_does_not(store, client_for, settings):
    """With every batch slot taken, a large batch is not parsed or stored until one frees, while an
    ordinary push goes through: 16 threads never hold 16 parsed batches at once."""
    import threading

    from routing.api import LARGE_BODY_BYTES, batch_slots

    settings.HUB_BATCH_CONCURRENCY = 1
    padding = "x" * 4096
    batch = [
        {"message": "order:new", "message_id": f"big-{n}", "payload": {"order": {"number": f"B{n}", "note": padding}}}
        for n in range(LARGE_BODY_BYTES // 4096 + 4)
    ]
    answers: list = []
    slot = batch_slots(1)
    slot.acquire()
    try:
        waiting = threading.Thread(
            target=lambda: answers.append(client_for(store).post("/events/batch", batch, format="json"))
        )
        waiting.start()
        single = client_for(store).post("/events", GOOD, format="json")
        assert single.status_code == 202
        waiting.join(timeout=1)
        assert waiting.is_alive() and not answers
        assert list(Event.objects.values_list("message_id", flat=True)) == ["b-1"]
    finally:
        slot.release()
    waiting.join(timeout=30)
    assert answers and answers[0].status_code == 200 and answers[0].json()["accepted"] == len(batch)
    assert Event.objects.count() == len(batch) + 1
