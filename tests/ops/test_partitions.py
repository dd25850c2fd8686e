"""Events, deliveries and attempts partitioned by ranges of ids on PostgreSQL (docs/storage.md):
the partitions after migrate, the next ones created ahead by beat, retention by dropping a range
once every row in it is old (what must stay moved out first), and a store's message_id refused
twice whichever partition holds its first event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from events.models import Event, EventDescendants
from events.validation import envelope_validate
from infra import partitions as parts
from ops import services
from ops.partitions import STATISTICS_KEPT, partitions_retention_drop, partitions_statistics_refresh
from ops.tasks import partitions_ahead_task, partitions_analyze_task
from routing.models import Attempt, Delivery, Notification
from routing.outbox import events_accept
from tests.factories import (
    AttemptFactory,
    DeliveryFactory,
    EventFactory,
    NotificationFactory,
    StoreFactory,
    SubscriptionFactory,
)

pytestmark = pytest.mark.django_db

SPAN = 100
TABLES = ("events_event", "routing_delivery", "routing_attempt")


def _postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("partitions are PostgreSQL's; SQLite keeps one table and retention's DELETE")


def _next_id(value: int) -> None:
    """The shared sequence's next id (moved forward only: a sequence ignores the rollback)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('events_event', 'id'), %s, false)", [value])


def _partition_of(table: str, pk: int, column: str = "id") -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE {column} = %s", [pk])
        row = cursor.fetchone()
    return row[0] if row else ""


def _range_names(table: str) -> list[str]:
    return [p.name for p in parts.partitions(table)]


@pytest.fixture
def ranges(settings) -> int:
    """Ranges of SPAN ids in this test's transaction: the migration's partitions (empty here)
    replaced by one range starting at the returned id, the sequence's next."""
    _postgresql()
    settings.HUB_PARTITION_SPAN = SPAN
    settings.HUB_PARTITION_AHEAD = 1
    for table in reversed(TABLES):
        for partition in parts.partitions(table):
            parts.partition_drop(table, partition)
    base = (parts.sequence_last("events_event") // SPAN + 1) * SPAN
    _next_id(base)
    for table in TABLES:
        parts.partition_create(table, base, base + SPAN)
    return base


def test_the_three_tables_are_partitioned_after_migrate_with_a_default_and_the_next_range():
    _postgresql()
    last = parts.sequence_last("events_event")
    for table in TABLES:
        assert parts.partitioned(table), table
        assert any(p.low <= last + 1 < p.high for p in parts.partitions(table)), table
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s)", [parts.default_partition(table)])
            assert cursor.fetchone()[0] is not None
    # Deliveries draw from the events' sequence: an event's deliveries fall in its range.
    delivery = DeliveryFactory()
    assert abs(delivery.pk - delivery.event_id) < 10


def test_beat_creates_the_next_range_ahead_of_the_ids_in_every_table(ranges):
    assert partitions_ahead_task() is None
    # A whole range ahead already: nothing to create.
    assert _range_names("events_event") == [f"events_event_p{ranges}"]
    _next_id(ranges + 60)
    partitions_ahead_task()
    for table in TABLES:
        assert _range_names(table) == [f"{table}_p{ranges}", f"{table}_p{ranges + SPAN}"]
    _next_id(ranges + SPAN + 5)
    delivery = DeliveryFactory()
    assert _partition_of("events_event", delivery.event_id) == f"events_event_p{ranges + SPAN}"
    assert _partition_of("routing_delivery", delivery.pk) == f"routing_delivery_p{ranges + SPAN}"
    attempt = AttemptFactory(delivery=delivery)
    assert _partition_of("routing_attempt", attempt.pk) == f"routing_attempt_p{ranges + SPAN}"


def _old(**fields):
    """An event of the first range, made a week ago, with a delivery in `state` (or none)."""
    state = fields.pop("state", None)
    at = timezone.now() - timedelta(days=7)
    event = EventFactory(created_at=at, **fields)
    delivery = DeliveryFactory(event=event, state=state, created_at=at) if state else None
    return event, delivery


def test_retention_drops_an_old_range_and_moves_out_first_what_must_stay(ranges, settings):
    settings.HUB_RETENTION_DAYS = 1
    settings.HUB_RETENTION_INCLUDE_UNROUTED = False
    store = StoreFactory()
    done, done_delivery = _old(store=store, state="delivered")
    done_attempt = AttemptFactory(delivery=done_delivery, status_code=200, succeeded=True)
    done_note = NotificationFactory(delivery=done_delivery)
    EventDescendants.objects.create(root=done, count=1)
    failed, failed_delivery = _old(store=store, state="failed")
    failed_attempt = AttemptFactory(delivery=failed_delivery)
    failed_note = NotificationFactory(delivery=failed_delivery)
    parent, _ = _old(store=store, state="delivered")
    unrouted, _ = _old(store=store)
    replayed, _ = _old(store=store, state="delivered")

    # The next range, now: a reply's event under `parent` still owed, and a replay of an old
    # event, delivered.
    for table in TABLES:
        parts.partition_create(table, ranges + SPAN, ranges + 2 * SPAN)
    _next_id(ranges + SPAN)
    child = EventFactory(store=None, parent=parent, depth=1, message_id="reply-1")
    DeliveryFactory(event=child, state="pending")
    replay = DeliveryFactory(event=replayed, state="delivered")

    services.events_retention_purge()

    for table in TABLES:
        assert _range_names(table) == [f"{table}_p{ranges + SPAN}"], table
    # Gone with their range: the delivered event, its delivery, attempt, note, counter; the
    # replayed one and its later replay.
    assert not Event.objects.filter(pk__in=[done.pk, replayed.pk]).exists()
    assert not Delivery.objects.filter(pk__in=[done_delivery.pk, replay.pk]).exists()
    assert not Attempt.objects.filter(pk=done_attempt.pk).exists()
    assert not Notification.objects.filter(pk=done_note.pk).exists()
    assert not EventDescendants.objects.filter(root_id=done.pk).exists()
    # Kept, in the default partitions: the failed delivery's event with its delivery, attempt and
    # note; the parent of an event still owed; the event nobody wanted (unrouted stays by default).
    for event in (failed, parent, unrouted):
        assert _partition_of("events_event", event.pk) == "events_event_default"
    assert _partition_of("routing_delivery", failed_delivery.pk) == "routing_delivery_default"
    assert _partition_of("routing_attempt", failed_attempt.pk) == "routing_attempt_default"
    assert Notification.objects.filter(pk=failed_note.pk).exists()
    assert Event.objects.get(pk=child.pk).parent_id == parent.pk

    # The dropped event's message_id is free again; the kept one's still refuses a repeat.
    again = events_accept(
        store=store,
        envelopes=[
            envelope_validate({"message": "order:new", "message_id": m, "payload": {"order": {"number": "R1"}}})
            for m in (done.message_id, failed.message_id)
        ],
    )
    assert [r.created for r in again] == [True, False]
    assert again[1].event.pk == failed.pk


def test_retention_drops_unrouted_events_when_told_and_keeps_a_range_with_a_recent_row(ranges):
    unrouted, _ = _old()
    recent = EventFactory()
    for table in TABLES:
        parts.partition_create(table, ranges + SPAN, ranges + 2 * SPAN)
    _next_id(ranges + SPAN)
    older_than = timezone.now() - timedelta(days=1)

    assert partitions_retention_drop(older_than=older_than, include_unrouted=True).partitions == {}
    assert Event.objects.filter(pk=recent.pk).exists()

    Event.objects.filter(pk=recent.pk).update(created_at=timezone.now() - timedelta(days=2))
    dropped = partitions_retention_drop(older_than=older_than, include_unrouted=True)
    assert dropped.partitions["events_event"] == [f"events_event_p{ranges}"]
    assert dropped.kept_events == 0
    assert not Event.objects.filter(pk__in=[unrouted.pk, recent.pk]).exists()


def test_a_repeated_message_id_is_refused_across_ranges(ranges):
    store = StoreFactory()
    SubscriptionFactory(message_types=["order:new"])
    first = services.envelope_push(
        store=store, data={"message": "order:new", "message_id": "R-1", "payload": {"order": {"number": "R1"}}}
    )
    assert first.created
    for table in TABLES:
        parts.partition_create(table, ranges + SPAN, ranges + 2 * SPAN)
    _next_id(ranges + SPAN)

    again = services.envelope_push(
        store=store, data={"message": "order:new", "message_id": "R-1", "payload": {"order": {"number": "R1"}}}
    )
    assert not again.created and again.event.pk == first.event.pk
    batch = events_accept(
        store=store,
        envelopes=[
            envelope_validate({"message": "order:new", "message_id": m, "payload": {"order": {"number": "R1"}}})
            for m in ("R-1", "R-2")
        ],
    )
    assert [(r.created, r.event.pk == first.event.pk) for r in batch] == [(False, True), (True, False)]
    assert _partition_of("events_event", batch[1].event.pk) == f"events_event_p{ranges + SPAN}"
    assert Event.objects.filter(store=store, message_id="R-1").count() == 1
    # Another store's same message_id is its own.
    assert services.envelope_push(
        store=StoreFactory(), data={"message": "order:new", "message_id": "R-1", "payload": {"order": {}}}
    ).created


def test_a_key_left_by_a_dropped_event_is_taken_over_by_the_next_push(ranges):
    """Retention deletes a dropped range's keys after its commit; a push in between is stored."""
    store = StoreFactory()
    data = {"message": "order:new", "message_id": "R-9", "payload": {"order": {"number": "R9"}}}
    first = services.envelope_push(store=store, data=data).event
    with connection.cursor() as cursor:
        # Gone as a dropped partition's events go: no trigger fires, the key stays.
        cursor.execute("ALTER TABLE events_event DISABLE TRIGGER events_event_key_forget")
        cursor.execute("DELETE FROM events_event WHERE id = %s", [first.pk])
        cursor.execute("ALTER TABLE events_event ENABLE TRIGGER events_event_key_forget")
        cursor.execute("SELECT event_id FROM events_event_key WHERE message_id = 'R-9'")
        assert cursor.fetchone()[0] == first.pk

    again = services.envelope_push(store=store, data=data)
    assert again.created and again.event.pk != first.pk
    assert services.envelope_push(store=store, data=data).event.pk == again.event.pk


def _beat_runs(settings, entry_name: str, task_name: str, interval: float) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE[entry_name]
    assert entry["task"] == task_name
    assert entry["schedule"] == interval


def test_beat_runs_the_partitions_upkeep_and_it_does_nothing_without_partitions(settings):
    _beat_runs(settings, "partitions-ahead", partitions_ahead_task.name, settings.HUB_PARTITION_INTERVAL_SECONDS)
    if connection.vendor != "postgresql":
        from ops.partitions import partitions_ahead

        assert partitions_ahead() == []


def _routed_events(sub, tag: str, numbers: range) -> None:
    """An event for each number, each with a delivery to `sub`, written in two bulk INSERTs."""
    events = Event.objects.bulk_create(
        Event(store=sub.store, message="order:new", message_id=f"{tag}-{n}", payload={"n": n}) for n in numbers
    )
    Delivery.objects.bulk_create(Delivery(event=event, subscription=sub) for event in events)


def _routed_until(tag: str, done: Callable[[], bool]) -> None:
    """Routed events a thousand at a time (_routed_events) until `done()`: how many fill a
    partition past its statistics depends on what earlier tests left in its file."""
    sub, n = SubscriptionFactory(), 0
    while not done():
        _routed_events(sub, tag, range(n, n + 1000))
        n += 1000
        assert n <= 200_000


def test_beat_analyzes_a_partition_grown_past_twice_its_statistics_and_only_that_one(settings):
    _beat_runs(settings, "partitions-analyze", partitions_analyze_task.name, settings.HUB_PARTITION_ANALYZE_SECONDS)
    if connection.vendor != "postgresql":
        assert partitions_statistics_refresh() == []
        return
    settings.HUB_PARTITION_ANALYZE_FLOOR_PAGES = 8
    grown = ["events_event_p0", "routing_delivery_p0"]

    def pages(name: str) -> tuple[int, int]:
        """The partition's pages as its statistics have them, and as they are."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT relpages, pg_relation_size(oid) / current_setting('block_size')::int"
                " FROM pg_class WHERE oid = to_regclass(%s)",
                [name],
            )
            return cursor.fetchone()

    # Whatever earlier tests left: statistics that describe it.
    partitions_statistics_refresh()
    assert partitions_statistics_refresh() == []
    _routed_until("grown", lambda: all(now > 2 * max(known, 8) for known, now in map(pages, grown)))

    assert partitions_statistics_refresh() == grown
    # The statistics now describe what is there: nothing more to do until it doubles again.
    assert [known for known, _ in map(pages, grown)] == [now for _, now in map(pages, grown)]
    assert partitions_statistics_refresh() == []


def test_the_attempts_filling_up_are_left_to_autovacuum(settings):
    """Written and read by key: their ANALYZE every few seconds while a backlog is sent cost the
    delivery phase more than their plans gain (docs/performance.md, Deliveries/s)."""
    if connection.vendor != "postgresql":
        pytest.skip("partitions are PostgreSQL's")
    settings.HUB_PARTITION_ANALYZE_FLOOR_PAGES = 1
    partitions_statistics_refresh()
    _routed_events(SubscriptionFactory(), "tried", range(2000))
    Attempt.objects.bulk_create(
        Attempt(delivery=d, number=1, request_method="POST", request_url="http://x", status_code=500, latency_ms=1)
        for d in Delivery.objects.filter(event__message_id__startswith="tried-")
    )
    grown = parts.partitions_grown(list(parts.PARTITIONED), floor_pages=1)
    assert "routing_attempt_p0" in grown

    assert partitions_statistics_refresh() == [name for name in grown if name != "routing_attempt_p0"]
    assert parts.partitions_grown(list(parts.PARTITIONED), floor_pages=1) == ["routing_attempt_p0"]


# Committed rows: beat analyzes on a connection of its own.
@pytest.mark.django_db(transaction=True)
def test_beat_analyzes_the_grown_partitions_itself_when_it_starts(tmp_path, settings):
    """Before its first tick, not as a task: one sent then would wait behind a backlog's pumps."""
    from celery import current_app

    from integrator.beat import HeartbeatScheduler

    if connection.vendor != "postgresql":
        pytest.skip("partitions are PostgreSQL's")
    settings.HUB_PARTITION_ANALYZE_FLOOR_PAGES = 1
    partitions_statistics_refresh()

    def grown() -> list[str]:
        return parts.partitions_grown(list(STATISTICS_KEPT), floor_pages=1)

    _routed_until("start", lambda: "routing_delivery_p0" in grown())

    scheduler = HeartbeatScheduler(app=current_app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    scheduler.setup_schedule()
    scheduler.close()

    assert grown() == []
