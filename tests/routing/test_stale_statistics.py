"""A partition whose statistics have not seen its rows yet (a new range in its first minute, before
autovacuum's ANALYZE; a burst after a quiet spell): a status refresh reads no more for the rows
PostgreSQL does not know about, and a claim reads no more once beat's upkeep has analyzed the
partition that outgrew its statistics (on today's main it read every due row of the partition).

Counted in rows read (PostgreSQL's own counters for this transaction), not in time. The rows are
this test's transaction's, so no autovacuum has seen them: the state of a hot partition at its start."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from events.models import Event
from ops.partitions import partitions_statistics_refresh
from routing.claim import batch_claim, subscription_read
from routing.models import Delivery
from routing.status import events_status_refresh
from tests.factories import StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's statistics views count the rows")


def orders(sub, count: int, *, tag: str, start: timedelta) -> list[Delivery]:
    """`count` orders with one due delivery each to `sub`, the first due `start` ago."""
    store = StoreFactory()
    at = timezone.now() - start
    events = Event.objects.bulk_create(
        Event(
            store=store,
            message="order:new",
            message_id=f"{tag}-{n}",
            payload={"order": {"number": f"R{tag}-{n}"}},
            resource_key=f"order:R{tag}-{n}",
            created_at=at + timedelta(milliseconds=n),
        )
        for n in range(count)
    )
    return Delivery.objects.bulk_create(
        Delivery(event=event, subscription=sub, resource_key=event.resource_key, next_attempt_at=event.created_at)
        for event in events
    )


def rows_read(table: str) -> int:
    """Rows read from `table`'s partitions in this transaction so far: entries its indexes
    returned, and rows its sequential scans read."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(SUM(pg_stat_get_xact_tuples_returned(i.indexrelid)), 0) FROM pg_index i"
            " WHERE i.indrelid IN (SELECT relid FROM pg_partition_tree(%s))",
            [table],
        )
        from_indexes = cursor.fetchone()[0]
        cursor.execute(
            "SELECT COALESCE(SUM(seq_tup_read), 0) FROM pg_stat_xact_user_tables"
            " WHERE relid IN (SELECT relid FROM pg_partition_tree(%s))",
            [table],
        )
        return int(from_indexes) + int(cursor.fetchone()[0])


def reads(work, *tables: str) -> int:
    before = {t: rows_read(t) for t in tables}
    work()
    return sum(rows_read(t) - before[t] for t in tables)


def test_a_claim_reads_no_more_after_a_burst_once_beat_has_analyzed_the_grown_partition(settings):
    settings.HUB_DELIVERY_BATCH_SIZE = 50
    sub = SubscriptionFactory(max_in_flight=0)
    first = orders(sub, 150, tag="a", start=timedelta(hours=2))
    endpoint = subscription_read(sub.pk)
    taken: list[list[int]] = []

    def claim() -> None:
        batch = batch_claim(sub=endpoint, budget=5)
        assert batch is not None
        taken.append([d.pk for d in batch.deliveries])

    quiet = reads(claim, "routing_delivery")
    # A burst of other orders, due after those already waiting: the next claim takes the same
    # oldest fifty it would have taken without them.
    orders(sub, 5000, tag="b", start=timedelta(hours=1))
    analyzed = partitions_statistics_refresh()
    burst = reads(claim, "routing_delivery")

    assert {"events_event_p0", "routing_delivery_p0"} <= set(analyzed), analyzed

    assert taken == [[d.pk for d in first[:50]], [d.pk for d in first[50:100]]]
    assert burst <= 2 * quiet, (quiet, burst)


def test_a_status_refresh_reads_no_more_after_a_burst_its_statistics_have_not_seen():
    sub = SubscriptionFactory(max_in_flight=0)
    mine = orders(sub, 200, tag="a", start=timedelta(hours=2))
    ids = [d.event_id for d in mine]

    def refresh() -> None:
        # Found unchanged: the lock and the read alone (the UPDATE by ids is the planner's to
        # choose, a sequential scan where the partition is small enough).
        assert set(events_status_refresh(event_ids=ids).values()) == {"queued"}

    quiet = reads(refresh, "routing_delivery", "events_event")
    orders(sub, 5000, tag="b", start=timedelta(hours=1))
    burst = reads(refresh, "routing_delivery", "events_event")

    assert burst <= 2 * quiet, (quiet, burst)
