"""What a claim reads does not grow with one order's chain, counted in rows read (PostgreSQL's own
counters for this transaction), not in time.

And the window the claim looks at first never hides an order whose turn has come behind another
order's waiting deliveries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from events.models import Event
from routing.claim import batch_claim, subscription_read
from routing.models import Delivery
from tests.factories import DeliveryFactory, EventFactory, StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def chain(sub, *, sent: int, pending: int, key: str = "order:R1") -> list[Delivery]:
    """One order's deliveries to `sub`: `sent` delivered, then `pending` waiting, in order."""
    store = StoreFactory()
    start = timezone.now() - timedelta(hours=1)
    events = Event.objects.bulk_create(
        Event(
            store=store,
            message="order:updated",
            message_id=f"{key}-{sub.pk}-{n}",
            payload={"order": {"n": n}},
            resource_key=key,
            created_at=start + timedelta(milliseconds=n),
        )
        for n in range(sent + pending)
    )
    return Delivery.objects.bulk_create(
        Delivery(
            event=event,
            subscription=sub,
            resource_key=key,
            next_attempt_at=event.created_at,
            state="delivered" if n < sent else "pending",
        )
        for n, event in enumerate(events)
    )


def rows_read() -> dict[str, int]:
    """Rows read from routing_delivery in this transaction so far: through each index, and by
    sequential scans."""
    # Summed over the partitions (docs/storage.md), each index under its parent index's name.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(p.relname, c.relname), SUM(pg_stat_get_xact_tuples_returned(c.oid)) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " LEFT JOIN pg_inherits h ON h.inhrelid = c.oid LEFT JOIN pg_class p ON p.oid = h.inhparent"
            " WHERE i.indrelid IN (SELECT relid FROM pg_partition_tree('routing_delivery'))"
            " GROUP BY 1"
        )
        read = dict(cursor.fetchall())
        cursor.execute(
            "SELECT SUM(seq_tup_read) FROM pg_stat_xact_user_tables"
            " WHERE relid IN (SELECT relid FROM pg_partition_tree('routing_delivery'))"
        )
        read["(sequential)"] = cursor.fetchone()[0]
    return read


def claim_reads(sub) -> tuple[list[int], dict[str, int]]:
    endpoint = subscription_read(sub.pk)
    before = rows_read()
    batch = batch_claim(sub=endpoint, budget=5)
    after = rows_read()
    assert batch is not None
    return [d.pk for d in batch.deliveries], {name: after[name] - before.get(name, 0) for name in after}


def test_a_claim_reads_as_many_rows_for_a_long_chain_as_for_a_short_one(settings):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's statistics views count the rows")
    short, long = SubscriptionFactory(max_in_flight=0), SubscriptionFactory(max_in_flight=0)
    short_chain = chain(short, sent=20, pending=120)
    long_chain = chain(long, sent=1500, pending=1500)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE routing_delivery")

    # A batch smaller than the short chain's waiting run, so that both claims take a whole batch.
    batch = settings.HUB_DELIVERY_BATCH_SIZE = 100
    taken, short_reads = claim_reads(short)
    # The order's oldest waiting delivery and those that follow it, a batch of them, in order.
    assert taken == [d.pk for d in short_chain[20 : 20 + batch]]
    taken, long_reads = claim_reads(long)
    assert taken == [d.pk for d in long_chain[1500 : 1500 + batch]]

    # Bounded by the window the claim looks at (two batches) and a batch's run, whatever the
    # chain's length: ten times the chain and seventy-five times its history read no more than
    # twice the rows.
    assert sum(long_reads.values()) <= 2 * sum(short_reads.values()), (short_reads, long_reads)
    # Whether an earlier delivery holds one back is read in the index of open deliveries alone.
    assert long_reads.get("delivery_holding", 0) > 0, long_reads


@pytest.mark.parametrize("keyed", [True, False])
def test_an_order_whose_turn_has_come_is_claimed_behind_a_window_of_another_orders_waiting_ones(settings, keyed):
    """Order A's head is waiting for a retry an hour away; its many later deliveries are due and
    come first in claim order, more than the claim's first look takes in. Another order's
    delivery (or one without a resource key), due after all of them, is claimed all the same."""
    settings.HUB_DELIVERY_BATCH_SIZE = 3
    sub = SubscriptionFactory(max_in_flight=0)
    stuck = chain(sub, sent=0, pending=20, key="order:A")
    Delivery.objects.filter(pk=stuck[0].pk).update(
        state="retrying", attempt_count=1, next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    other = DeliveryFactory(
        subscription=sub, event=EventFactory(resource_key="order:B" if keyed else None, payload={"n": 1})
    )
    endpoint = subscription_read(sub.pk)
    batch = batch_claim(sub=endpoint, budget=5)
    assert batch is not None and [d.pk for d in batch.deliveries] == [other.pk]
    # Nothing else of order A went: its head has not been sent.
    assert batch_claim(sub=endpoint, budget=5) is None
