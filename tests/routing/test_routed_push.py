"""A routed push writes its event and deliveries in one atomic step (routing.outbox
_event_with_deliveries_insert): on PostgreSQL one statement, committed when it returns, with the same rows the
ORM writes; a repeat writes nothing, and a failure leaves nothing half-written. The pushes wake
no worker (unconsumed_queue): the session's worker would send what they write."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from events.models import Event, EventStatus
from events.services import event_build
from events.validation import envelope_validate
from routing.models import Delivery, Subscription
from routing.outbox import _event_with_deliveries_insert
from tests.factories import StoreFactory, SubscriptionFactory


def _envelope(message_id: str, number: str = "R1") -> dict:
    return {"message": "order:new", "message_id": message_id, "payload": {"order": {"number": number}}}


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def _columns(delivery: Delivery) -> dict:
    """Every column the ORM reads back, but the ones that name the row or its time of writing."""
    row = Delivery.objects.filter(pk=delivery.pk).values().get()
    for name in ("id", "event_id", "created_at", "updated_at", "next_attempt_at"):
        row.pop(name)
    return row


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepared", [True, False])
def test_a_routed_push_on_its_own_is_one_statement_on_postgresql(client_for, unconsumed_queue, settings, prepared):
    if connection.vendor != "postgresql":
        pytest.skip("an INSERT inside WITH is PostgreSQL's; elsewhere a transaction holds the two")
    settings.DB_PREPARED_STATEMENTS = prepared  # off for a PgBouncer that cannot keep them
    store = StoreFactory()
    subs = [SubscriptionFactory(message_types=["order:new"]), SubscriptionFactory(message_types=["order:*"])]
    api = client_for(store)
    before = set(_prepared())
    assert api.post("/events", _envelope("warm", "R0"), format="json").status_code == 202  # reads, caches

    with CaptureQueriesContext(connection) as queries:
        response = api.post("/events", _envelope("one", "R1"), format="json")

    assert response.status_code == 202, response.content
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 1, statements  # no BEGIN, no second INSERT, no COMMIT
    assert statements[0].startswith('WITH event AS (INSERT INTO "events_event"')
    made = [text for text in _prepared() if text not in before]
    assert [text.startswith("WITH event AS") for text in made] == ([True] if prepared else [])
    event = Event.objects.get(message_id="one")
    assert str(event.uid) == response.json()["event_id"]
    assert event.status == EventStatus.QUEUED
    deliveries = list(event.deliveries.order_by("id"))
    assert [d.subscription_id for d in deliveries] == [s.pk for s in subs]
    assert all(d.next_attempt_at == event.created_at and d.resource_key == "order:R1" for d in deliveries)


@pytest.mark.django_db(transaction=True)
def test_the_statement_writes_the_deliveries_the_orm_writes(client_for, unconsumed_queue):
    store = StoreFactory()
    sub = SubscriptionFactory(message_types=["order:new"])
    assert client_for(store).post("/events", _envelope("pushed", "R7"), format="json").status_code == 202
    pushed = Delivery.objects.get(event__message_id="pushed")

    event = event_build(store=store, envelope=envelope_validate(_envelope("orm", "R7")))
    event.save()
    by_orm = Delivery.objects.bulk_create([Delivery.routed(event=event, subscription=sub)])[0]

    assert _columns(pushed) == _columns(by_orm)
    assert pushed.next_attempt_at == pushed.event.created_at


@pytest.mark.django_db(transaction=True)
def test_a_repeated_routed_push_writes_no_delivery(client_for, unconsumed_queue):
    store = StoreFactory()
    SubscriptionFactory(message_types=["order:new"])
    api = client_for(store)
    first = api.post("/events", _envelope("again"), format="json")
    second = api.post("/events", _envelope("again"), format="json")

    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["event_id"] == first.json()["event_id"]
    assert (Event.objects.count(), Delivery.objects.count()) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_an_event_whose_deliveries_cannot_be_written_is_not_written_either():
    store = StoreFactory()
    gone = SubscriptionFactory()
    event = event_build(store=store, envelope=envelope_validate(_envelope("orphan")))
    delivery = Delivery.routed(event=event, subscription=gone)
    Subscription.objects.filter(pk=gone.pk).delete()  # deleted after routing chose it

    with pytest.raises(IntegrityError):
        _event_with_deliveries_insert(event, [delivery], savepoint=False)

    assert (Event.objects.count(), Delivery.objects.count()) == (0, 0)
