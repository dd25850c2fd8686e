"""routing.status.events_status_refresh: each event's status from its deliveries as they are in
the database, under a row lock, one UPDATE per status that changed."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from events.models import EventStatus
from routing.models import DeliveryState
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
    # One locking read, then one UPDATE per new status (done's was already right).
    assert len(statements) == 3
    if connection.vendor == "postgresql":
        # Each event locked as it is looked up, by key.
        assert "WHERE x.id = k.id FOR NO KEY UPDATE)" in statements[0]


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
