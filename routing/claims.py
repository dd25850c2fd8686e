"""Claiming an endpoint's due deliveries for one pump: a batch taken in one statement, within the
endpoint's in-flight limit and each resource's order, read back with the events and stores the
send needs, and finished under its claim; and the pump's read of its endpoint. Written-out SQL
throughout: the ORM took longer to build these statements than the database to run them
(docs/performance.md)."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from events.models import Event, Store
from routing import transport
from routing.attempts import subscription_max_in_flight
from routing.models import (
    DELIVERY_OPEN_STATES,
    DELIVERY_ORDER_HOLDING_STATES,
    Delivery,
    DeliveryState,
    Subscription,
)
from routing.rows import model_columns, placeholders, row_instance, row_related


@dataclass
class Batch:
    subscription: Subscription
    claim: int
    deliveries: list[Delivery]


_SUBSCRIPTION_READ = f"""
    SELECT {model_columns(Subscription, "sub")}, {model_columns(Store, "st")}
    FROM {Subscription._meta.db_table} sub LEFT JOIN {Store._meta.db_table} st ON st.id = sub.store_id
    WHERE sub.id = %s"""


def subscription_read(subscription_id: int) -> Subscription | None:
    """The endpoint with its store, as select_related("store") reads it, by written-out SQL: the
    ORM compiling the same query took more CPU than PostgreSQL running it, on every pump."""
    with connection.cursor() as cursor:
        cursor.execute(_SUBSCRIPTION_READ, [subscription_id])
        row = cursor.fetchone()
    if row is None:
        return None
    sub, at = row_instance(Subscription, row, 0)
    row_related(sub, "store", row, at)
    return sub


_DELIVERY = Delivery._meta.db_table
_SUBSCRIPTION = Subscription._meta.db_table
_OPEN = ", ".join(f"'{state}'" for state in DELIVERY_OPEN_STATES)
_HOLDING = ", ".join(f"'{state}'" for state in DELIVERY_ORDER_HOLDING_STATES)
# The claim a pump makes every round, in SQL rather than built by the ORM each time: building it
# cost as much as running it. Plain SQL that PostgreSQL and SQLite both speak.
#
# Batches of an endpoint being sent now, each with at most one request on the wire (a delivering
# row without a claim, claimed one by one before batches existed, is its own request).
_IN_FLIGHT = f"""
    SELECT COUNT(DISTINCT COALESCE(f.claim, -f.id)) FROM {_DELIVERY} f
    WHERE f.subscription_id = %s AND f.state = '{DeliveryState.DELIVERING}' AND f.lease_expires_at > %s"""
# The endpoint's deliveries a batch may take now: due, and no earlier delivery of the same resource
# to the same endpoint still open (a delivery without a resource key is never held: NULL = NULL is
# not true).
_SENDABLE = f"""
    d.subscription_id = %s AND d.state IN ({_OPEN}) AND d.next_attempt_at <= %s
    AND NOT EXISTS (
        SELECT 1 FROM {_DELIVERY} e
        WHERE e.subscription_id = d.subscription_id AND e.resource_key = d.resource_key AND e.id < d.id
        AND e.state IN ({_HOLDING}))"""


def _only(only: Collection[int] | None) -> tuple[str, list[int]]:
    ids = list(only or [])
    if only is None:
        return "", []
    return f" AND d.id IN ({placeholders(len(ids)) or 'NULL'})", ids


_CLAIMED_RETURNING = model_columns(Delivery, _DELIVERY)
# What follows the claiming UPDATE in a CTE named `claimed` on PostgreSQL: each delivery it took
# with its event and the event's store, as select_related("event", "event__store") reads them, in
# claim order. The rows are the UPDATE's own (RETURNING every column): in a data-modifying CTE the
# rest of the query sees the table as it was before it.
_CLAIMED_WITH_EVENTS = f"""
    SELECT {model_columns(Delivery, "claimed")}, {model_columns(Event, "e")}, {model_columns(Store, "s")}
    FROM claimed JOIN {Event._meta.db_table} e ON e.id = claimed.event_id
    LEFT JOIN {Store._meta.db_table} s ON s.id = e.store_id
    ORDER BY claimed.next_attempt_at, claimed.id"""


def lease_seconds(sub: Subscription, *, budget: float) -> float:
    """How long a batch's claim lasts: longer than the batch can keep any of its deliveries on the
    wire, so that the sweeper never hands one on (and no second attempt starts) while it is.

    A batch sends until the pump's budget is spent, so its last request may start `budget` after
    the claim, and the exchange's deadline (routing.deadline) ends that request at most the
    endpoint's timeout later, connect and reply included. The margin covers resolving the host
    (before the deadline can cut anything) and recording the batch."""
    return budget + transport.timeout_bounded(sub.timeout_seconds) + settings.HUB_DELIVERY_LEASE_MARGIN_SECONDS


def batch_claim(*, sub: Subscription, only: Collection[int] | None, budget: float) -> Batch | None:
    """Take up to HUB_DELIVERY_BATCH_SIZE due deliveries of the endpoint for this worker, or None
    when there is nothing to send (none due, none whose turn has come, endpoint off or at its limit).

    On PostgreSQL it is one round trip: the endpoint's row lock and the claiming UPDATE as two
    statements of one query, which PostgreSQL runs as one transaction, each statement with a
    snapshot of its own. The UPDATE's in-flight count therefore sees every claim committed before
    the lock was granted, so a limit of N means N, not N plus whatever raced past the count."""
    now = timezone.now()
    limit = subscription_max_in_flight(sub)
    claim = secrets.randbits(62) + 1
    lease = now + timedelta(seconds=lease_seconds(sub, budget=budget))
    at = connection.ops.adapt_datetimefield_value(now)
    only_sql, only_ids = _only(only)
    postgresql = connection.vendor == "postgresql"
    # Rows another worker is claiming are theirs; waiting for them would only find them taken.
    skip_locked = " FOR UPDATE SKIP LOCKED" if postgresql else ""
    within_limit = f" AND ({_IN_FLIGHT}) < %s" if limit else ""
    # PostgreSQL: every column of the rows taken, for the events' join below; SQLite: their ids.
    returning = _CLAIMED_RETURNING if postgresql else "id"
    update = f"""
        UPDATE {_DELIVERY} SET state = '{DeliveryState.DELIVERING}', attempt_count = attempt_count + 1,
            lease_expires_at = %s, claim = %s, updated_at = %s
        WHERE id IN (
            SELECT d.id FROM {_DELIVERY} d WHERE {_SENDABLE}{only_sql}
            ORDER BY d.next_attempt_at, d.id LIMIT %s{skip_locked})
        AND EXISTS (SELECT 1 FROM {_SUBSCRIPTION} s WHERE s.id = %s AND s.is_enabled){within_limit}
        RETURNING {returning}"""
    params: list[Any] = [connection.ops.adapt_datetimefield_value(lease), claim, at, sub.pk, at, *only_ids]
    params += [settings.HUB_DELIVERY_BATCH_SIZE, sub.pk] + ([sub.pk, at, limit] if limit else [])
    with connection.cursor() as cursor:
        if postgresql:
            # The claimed rows come back with their events and stores in the same round trip: the
            # ORM read after the claim was a second one, and compiling it cost more CPU than
            # running it (docs/performance.md, sixth round).
            update = f"WITH claimed AS ({update}){_CLAIMED_WITH_EVENTS}"
            if limit:
                # NO KEY: claims queue up on each other, but not on the pushes inserting this
                # endpoint's deliveries (their foreign key takes a KEY SHARE lock on the row until
                # their commit, which waits for the disk).
                update = f"SELECT 1 FROM {_SUBSCRIPTION} WHERE id = %s FOR NO KEY UPDATE;{update}"
                params.insert(0, sub.pk)
            cursor.execute(update, params)
            if limit:
                cursor.nextset()
            deliveries = [_claimed_delivery(row) for row in cursor.fetchall()]
        else:
            # SQLite: the atomic block's BEGIN IMMEDIATE makes claims one at a time.
            with transaction.atomic():
                cursor.execute(update, params)
                ids = [row[0] for row in cursor.fetchall()]
            deliveries = list(
                Delivery.objects.select_related("event", "event__store")
                .filter(pk__in=ids)
                .order_by("next_attempt_at", "id")
            )
    if not deliveries:
        return None
    for delivery in deliveries:
        delivery.subscription = sub
    return Batch(subscription=sub, claim=claim, deliveries=deliveries)


def _claimed_delivery(row: tuple[Any, ...]) -> Delivery:
    delivery, at = row_instance(Delivery, row, 0)
    event, at = row_related(delivery, "event", row, at)
    row_related(event, "store", row, at)
    return delivery


def batch_finish(ids: list[int], *, claim: int, changes: dict[str, Any]) -> int:
    """UPDATE the deliveries of `ids` still delivering under `claim` (the fence: one whose lease ran
    out and that the sweeper handed on is no longer this batch's) with `changes`, values through
    their fields, as Delivery.objects.filter(...).update(**changes) would; how many it changed."""
    fields = [Delivery._meta.get_field(name) for name in changes]
    params = [f.get_db_prep_save(changes[f.name], connection) for f in fields]
    params += [*ids, DeliveryState.DELIVERING, claim]
    with connection.cursor() as cursor:
        cursor.execute(_batch_finish_sql(tuple(f.column for f in fields), len(ids)), params)
        return cursor.rowcount


@functools.lru_cache(maxsize=64)
def _batch_finish_sql(columns: tuple[str, ...], count: int) -> str:
    quote = connection.ops.quote_name
    return "UPDATE {} SET {} WHERE {} IN ({}) AND {} = %s AND {} = %s".format(
        quote(Delivery._meta.db_table),
        ", ".join(f"{quote(column)} = %s" for column in columns),
        quote("id"),
        placeholders(count),
        quote("state"),
        quote("claim"),
    )
