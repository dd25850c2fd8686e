"""routing.status.events_status_refresh: each event's status from its deliveries as they are in
the database, under a row lock, one UPDATE per status that changed."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from events.models import EventStatus
from routing.models import Delivery, DeliveryState
from routing.status import events_status_refresh
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def test_statuses_follow_the_deliveries_and_only_changed_ones_are_written():
    fanned, done, lonely = EventFactory(), EventFactory(), EventFactory()
    DeliveryFactory(event=fanned, state=DeliveryState.DELIVERED, attempt_count=1)
    DeliveryFactory(event=fanned, state=DeliveryState.FAILED, attempt_count=3)
    DeliveryFactory(event=done, state=DeliveryState.DELIVERED, attempt_count=1)
    replayed = DeliveryFactory(event=done, state=DeliveryState.FAILED, attempt_count=2)
    # A replay of the failed one, delivered: it supersedes what it replays.
    DeliveryFactory(event=done, subscription=replayed.subscription, replay_of=replayed, state=DeliveryState.DELIVERED)
    done.status = EventStatus.DELIVERED
    done.save()

    with CaptureQueriesContext(connection) as queries:
        statuses = events_status_refresh(event_ids=[lonely.pk, fanned.pk, done.pk, fanned.pk])

    assert statuses == {
        fanned.pk: EventStatus.PARTIALLY_FAILED,
        done.pk: EventStatus.DELIVERED,
        lonely.pk: EventStatus.UNROUTED,
    }
    fanned.refresh_from_db()
    lonely.refresh_from_db()
    assert (fanned.status, lonely.status) == (EventStatus.PARTIALLY_FAILED, EventStatus.UNROUTED)
    statements = [q["sql"] for q in queries.captured_queries if q["sql"].startswith(("SELECT", "UPDATE"))]
    # On PostgreSQL the lock, then the read; then one UPDATE per new status (done's was right).
    if connection.vendor == "postgresql":
        assert len(statements) == 4
        assert "WHERE x.id = k.id FOR NO KEY UPDATE)" in statements[0]
        assert "FOR NO KEY UPDATE" not in statements[1]
    else:
        assert len(statements) == 3


def test_an_open_delivery_keeps_its_event_queued_or_delivering():
    waiting, started = EventFactory(), EventFactory()
    sub = SubscriptionFactory()
    DeliveryFactory(event=waiting, subscription=sub)
    DeliveryFactory(event=started, subscription=sub, state=DeliveryState.RETRYING, attempt_count=1)

    assert events_status_refresh(event_ids=[waiting.pk, started.pk]) == {
        waiting.pk: EventStatus.QUEUED,
        started.pk: EventStatus.DELIVERING,
    }
    assert events_status_refresh(event_ids=[]) == {}


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_one_event_recorded_at_once_leave_it_delivered():
    """Two endpoints' outcomes for one event, recorded in two transactions at once: the second
    waits for the first's lock on the event, then reads the deliveries as the first left them."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's writers take the whole database one at a time")
    event = EventFactory()
    first_delivery, second_delivery = (
        DeliveryFactory(event=event, state=DeliveryState.DELIVERING, attempt_count=1) for _ in range(2)
    )
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def record(delivery, *, hold: bool) -> None:
        try:
            with transaction.atomic():
                Delivery.objects.filter(pk=delivery.pk).update(state=DeliveryState.DELIVERED)
                events_status_refresh(event_ids=[event.pk])
                if hold:
                    holding.set()
                    release.wait(10)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread below
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=record, args=(first_delivery,), kwargs={"hold": True})
    first.start()
    assert holding.wait(10)
    second = threading.Thread(target=record, args=(second_delivery,), kwargs={"hold": False})
    second.start()

    def second_waits() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone() is not None

    deadline = time.monotonic() + 10
    while not second_waits():
        assert time.monotonic() < deadline, "the second recording never waited for the first's lock"
        time.sleep(0.01)
    release.set()
    first.join(10)
    second.join(10)

    assert not errors
    event.refresh_from_db()
    assert event.status == EventStatus.DELIVERED
