"""A batch is accepted together (routing.outbox.events_accept: one insert for its events, one for
their deliveries) with the answers, deliveries and statuses that accepting each envelope on its
own gives."""

import pytest

from events.models import Event, EventStatus
from routing.models import Delivery
from tests.conftest import posts_at_once
from tests.factories import StoreFactory, SubscriptionFactory

DEADLINE_SECONDS = 60


def envelope(message_id: str, number: str, message: str = "order:new") -> dict:
    return {"message": message, "message_id": message_id, "payload": {"order": {"number": number}}}


@pytest.mark.django_db
def test_batch_routes_each_event_in_order_and_stores_the_unwanted_as_unrouted(api):
    sub = SubscriptionFactory(message_types=["order:new"])
    batch = [envelope("a", "R1"), envelope("b", "R1", "order:update"), envelope("c", "R1"), envelope("d", "R2")]

    response = api.post("/events/batch", batch, format="json")

    assert response.status_code == 200, response.content
    assert [r["status_code"] for r in response.json()["results"]] == [202, 202, 202, 202]
    status = dict(Event.objects.values_list("message_id", "status"))
    assert status == {
        "a": EventStatus.QUEUED,
        "b": EventStatus.UNROUTED,
        "c": EventStatus.QUEUED,
        "d": EventStatus.QUEUED,
    }
    # Delivery ids follow the batch's order: that is what keeps one order's deliveries in sequence.
    deliveries = list(
        Delivery.objects.order_by("id").values_list("event__message_id", "subscription_id", "resource_key")
    )
    assert deliveries == [("a", sub.pk, "order:R1"), ("c", sub.pk, "order:R1"), ("d", sub.pk, "order:R2")]


@pytest.mark.django_db
def test_batch_answers_a_stored_or_repeated_message_id_with_the_first_event(api):
    SubscriptionFactory(message_types=["order:new"])
    first = api.post("/events", envelope("a", "R1"), format="json").json()

    body = api.post(
        "/events/batch", [envelope("a", "R1"), envelope("b", "R2"), envelope("b", "R2")], format="json"
    ).json()

    assert [r["status_code"] for r in body["results"]] == [200, 202, 200]
    assert body["results"][0]["event_id"] == first["event_id"]
    assert body["results"][2]["event_id"] == body["results"][1]["event_id"]
    assert (body["accepted"], body["duplicates"]) == (1, 2)
    assert Delivery.objects.count() == 2  # one per stored event, none for the repeats


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_batches_store_each_event_once_and_agree_on_its_id():
    """Whichever batch's look-up misses an event a concurrent batch is storing, its multi-row insert
    hits the unique constraint and it falls back to one event at a time: every answer agrees."""
    store = StoreFactory()
    SubscriptionFactory(message_types=["order:new"])
    batch = [envelope(f"m{i}", f"R{i}") for i in range(10)]
    threads_count = 4
    answers, errors = posts_at_once(store.token, "/events/batch", batch, threads_count, DEADLINE_SECONDS)

    assert not errors, errors
    assert [status for status, _ in answers] == [200] * threads_count
    stored = dict(Event.objects.filter(store=store).values_list("message_id", "uid"))
    assert sorted(stored) == sorted(f"m{i}" for i in range(10))
    assert Delivery.objects.count() == 10
    for index in range(10):
        results = [body["results"][index] for _, body in answers]
        assert {r["event_id"] for r in results} == {str(stored[f"m{index}"])}
        assert sorted(r["status_code"] for r in results) == [200] * (threads_count - 1) + [202]
