"""Retention: a periodic task purges delivered events older than HUB_RETENTION_DAYS, in batches;
failed ones (and anything still owed) stay until someone handles them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from events.models import Event
from infra import partitions as parts
from ops.services import events_retention_purge
from ops.tasks import events_retention_task
from routing.models import Attempt, ReturnedObject
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _default_partitions() -> None:
    """On PostgreSQL, every row in the default partitions, which keep this batched DELETE (the ranges
    are dropped whole once all their rows are old: tests/ops/test_partitions.py)."""
    if connection.vendor != "postgresql":
        return
    for table in ("routing_attempt", "routing_delivery", "events_event"):
        for partition in parts.partitions(table):
            parts.partition_drop(table, partition)


def event_with(state: str, age_days: float) -> Event:
    event = EventFactory()
    Event.objects.filter(pk=event.pk).update(created_at=timezone.now() - timedelta(days=age_days))
    delivery = DeliveryFactory(event=event, state=state)
    Attempt.objects.create(delivery=delivery, number=1, request_method="POST", request_url="http://x/")
    return event


def test_old_delivered_events_are_purged_in_batches_and_the_rest_kept(settings):
    settings.HUB_RETENTION_DAYS = 30
    settings.HUB_RETENTION_INCLUDE_UNROUTED = False
    settings.HUB_RETENTION_BATCH_SIZE = 2
    old_delivered = [event_with("delivered", 31) for _ in range(5)]
    old_cancelled = event_with("cancelled", 31)
    kept = {
        "failed": event_with("failed", 31),
        "retrying": event_with("retrying", 31),
        "pending": event_with("pending", 31),
        "recent": event_with("delivered", 29),
    }
    unrouted = EventFactory()
    Event.objects.filter(pk=unrouted.pk).update(created_at=timezone.now() - timedelta(days=90))

    assert events_retention_purge() == 6
    remaining = set(Event.objects.values_list("pk", flat=True))
    assert not remaining & {e.pk for e in [*old_delivered, old_cancelled]}
    assert {e.pk for e in kept.values()} | {unrouted.pk} == remaining
    assert Attempt.objects.count() == len(kept)  # attempts went with their events

    settings.HUB_RETENTION_INCLUDE_UNROUTED = True
    events_retention_task()  # what beat runs
    assert not Event.objects.filter(pk=unrouted.pk).exists()


def test_by_default_old_unrouted_events_go_too_and_recent_ones_stay(settings):
    """Stored history stays bounded: an event no subscription wanted is not kept for good."""
    settings.HUB_RETENTION_DAYS = 30
    old, recent = EventFactory(), EventFactory()
    Event.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    Event.objects.filter(pk=recent.pk).update(created_at=timezone.now() - timedelta(days=29))

    events_retention_task()  # what beat runs, with the hub's default settings

    assert set(Event.objects.values_list("pk", flat=True)) == {recent.pk}


def test_zero_days_keeps_everything(settings):
    settings.HUB_RETENTION_DAYS = 0
    event = event_with("delivered", 400)
    assert events_retention_purge() == 0
    assert Event.objects.filter(pk=event.pk).exists()


def test_beat_runs_retention_periodically():
    entry = django_settings.CELERY_BEAT_SCHEDULE["events-retention"]
    assert entry["task"] == events_retention_task.name
    assert entry["schedule"] == django_settings.HUB_RETENTION_INTERVAL_SECONDS


def test_returned_objects_older_than_the_window_are_forgotten_in_batches(settings):
    settings.HUB_RETENTION_DAYS = 30
    settings.HUB_RETENTION_BATCH_SIZE = 2
    sub = SubscriptionFactory()
    old = [ReturnedObject.objects.create(subscription=sub, key=f"orders:R{n}", digest="d") for n in range(5)]
    ReturnedObject.objects.filter(pk__in=[o.pk for o in old]).update(created_at=timezone.now() - timedelta(days=31))
    young = ReturnedObject.objects.create(subscription=sub, key="orders:R9", digest="d")

    events_retention_task()

    assert list(ReturnedObject.objects.values_list("pk", flat=True)) == [young.pk]
