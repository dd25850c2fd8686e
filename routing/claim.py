"""Claiming an endpoint's due deliveries for one pump: a batch taken in one statement, within the
endpoint's in-flight limit and each resource's order, read back with the events and stores the
send needs; and the pump's read of its endpoint. Written-out SQL throughout: the ORM took longer
to build these statements than the database to run them."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from events.models import Event, Store
from routing.models import DELIVERY_OPEN_STATES, DELIVERY_UNFINISHED_STATES, Delivery, DeliveryState, Subscription
from routing.rows import model_columns, placeholders, row_instance, row_related
from routing.standing import subscription_max_in_flight
from routing.transport.exchange import timeout_bounded


@dataclass
class Batch:
    subscription: Subscription
    claim: int
    deliveries: list[Delivery]
    # The latest its lease may be renewed to (lease_seconds).
    hold_until: datetime


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
_HOLDING = ", ".join(f"'{state}'" for state in DELIVERY_UNFINISHED_STATES)
# The claim a pump makes every round, in SQL rather than built by the ORM each time: building it
# cost as much as running it. Plain SQL that PostgreSQL and SQLite both speak.
#
# Batches of an endpoint being sent now, each with at most one request on the wire (a delivering
# row without a claim, claimed one by one before batches existed, is its own request).
_IN_FLIGHT = f"""
    SELECT COUNT(DISTINCT COALESCE(f.claim, -f.id)) FROM {_DELIVERY} f
    WHERE f.subscription_id = %s AND f.state = '{DeliveryState.DELIVERING}' AND f.lease_expires_at > %s"""
# An earlier delivery of the same resource to the same endpoint, still open, holds a delivery back
# (one without a resource key is never held: NULL = NULL is not true). The probe reads the partial
# index of open deliveries (delivery_holding): one look, however many of the resource's deliveries
# were sent before.
_HELD_BACK = f"""EXISTS (
        SELECT 1 FROM {_DELIVERY} e
        WHERE e.subscription_id = %s AND e.resource_key = {{alias}}.resource_key AND e.id < {{alias}}.id
        AND e.state IN ({_HOLDING}))"""
# The oldest open delivery to the endpoint of the resource `alias`.`key` (which has one): the one
# whose turn it is. Asked as "the first open delivery in (resource, id) order from this resource
# on", an order only delivery_holding has: asked as MIN(id), PostgreSQL may walk the primary key
# from the table's first row. A subquery evaluated once per resource, where NOT EXISTS let the
# planner hash all of the endpoint's open deliveries to answer for a few.
_HEAD = f"""
        SELECT e.id FROM {_DELIVERY} e
        WHERE e.subscription_id = %s AND e.state IN ({_HOLDING}) AND e.resource_key >= {{alias}}.{{key}}
        ORDER BY e.resource_key, e.id LIMIT 1"""
# The deliveries a batch may take now, found without walking an order's queue: the first due ones
# in claim order (a window of two batches), those of them nothing holds back; and only when that
# window is taken up by deliveries held back (one order's long chain, say), the oldest open
# delivery of each resource (one index look per resource, in the partial index of open ones) and
# the due deliveries without a resource key. A backlog of many orders fills its batch from the
# window; one order's chain costs the same few looks per claim at any length.
_CANDIDATES = f"""
    WITH RECURSIVE
    win AS (
        SELECT w.id, w.resource_key FROM {_DELIVERY} w
        WHERE w.subscription_id = %s AND w.state IN ({_OPEN}) AND w.next_attempt_at <= %s
        ORDER BY w.next_attempt_at, w.id LIMIT %s),
    ready AS (
        SELECT w.id FROM win w WHERE w.resource_key IS NULL OR w.id IN (
            SELECT ({_HEAD.format(alias="r", key="resource_key")}) FROM (SELECT DISTINCT resource_key FROM win) r)),
    clogged AS (SELECT (SELECT COUNT(*) FROM win) >= %s AND (SELECT COUNT(*) FROM ready) < %s AS yes),
    resources(k) AS (
        SELECT MIN(h.resource_key) FROM {_DELIVERY} h
        WHERE h.subscription_id = %s AND h.state IN ({_HOLDING}) AND (SELECT yes FROM clogged)
        UNION ALL
        SELECT (
            SELECT MIN(h.resource_key) FROM {_DELIVERY} h
            WHERE h.subscription_id = %s AND h.state IN ({_HOLDING}) AND h.resource_key > resources.k)
        FROM resources WHERE resources.k IS NOT NULL)
    SELECT id FROM ready
    UNION
    SELECT ({_HEAD.format(alias="resources", key="k")}) FROM resources WHERE resources.k IS NOT NULL
    UNION
    SELECT id FROM (
        SELECT u.id FROM {_DELIVERY} u
        WHERE u.subscription_id = %s AND u.state IN ({_OPEN}) AND u.resource_key IS NULL
        AND u.next_attempt_at <= %s AND (SELECT yes FROM clogged)
        ORDER BY u.next_attempt_at, u.id LIMIT %s) unkeyed"""


def _candidates_params(sub_id: int, at: Any, batch: int) -> list[Any]:
    window = 2 * batch
    return [sub_id, at, window, sub_id, window, batch, sub_id, sub_id, sub_id, sub_id, at, batch]


def _sendable(
    *, sub_id: int, at: Any, batch: int, only: Collection[int] | None, postgresql: bool
) -> tuple[str, list[Any]]:
    """The SELECT of the ids a batch takes (due, their turn come, in claim order, at most `batch`)
    and its parameters. `only`: those deliveries alone, each checked against its resource."""
    params: list[Any]
    if only is not None:
        ids = list(only)
        where = f"d.id IN ({placeholders(len(ids)) or 'NULL'}) AND NOT {_HELD_BACK.format(alias='d')}"
        params = [*ids, sub_id]
    elif postgresql:
        # The candidates' rows looked up by their keys, one by one: joined as IN (subquery),
        # PostgreSQL scanned every row of the endpoint to match them.
        sql = f"""
            SELECT d.id FROM unnest(ARRAY({_CANDIDATES})) AS c(id) JOIN {_DELIVERY} d ON d.id = c.id
            WHERE d.state IN ({_OPEN}) AND d.next_attempt_at <= %s
            ORDER BY d.next_attempt_at, d.id LIMIT %s"""
        return sql, [*_candidates_params(sub_id, at, batch), at, batch]
    else:
        where = f"d.id IN ({_CANDIDATES})"
        params = _candidates_params(sub_id, at, batch)
    sql = f"""
        SELECT d.id FROM {_DELIVERY} d
        WHERE {where} AND d.subscription_id = %s AND d.state IN ({_OPEN}) AND d.next_attempt_at <= %s
        ORDER BY d.next_attempt_at, d.id LIMIT %s"""
    return sql, [*params, sub_id, at, batch]


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
    """The longest a batch's claim may be held: longer than the batch can keep any of its
    deliveries on the wire. The lease itself is short (HUB_LEASE_SECONDS) and renewed while the
    batch is sent (routing.leases), never past this hold limit.

    A batch sends until the pump's budget is spent, so its last request may start `budget` after
    the claim, and the exchange's deadline (routing.transport.deadline) ends that request at most the
    endpoint's timeout later, connect and reply included. The margin covers resolving the host
    (before the deadline can cut anything) and recording the batch."""
    return budget + timeout_bounded(sub.timeout_seconds) + settings.HUB_DELIVERY_LEASE_MARGIN_SECONDS


def batch_claim(*, sub: Subscription, only: Collection[int] | None, budget: float) -> Batch | None:
    """Take up to HUB_DELIVERY_BATCH_SIZE due deliveries of the endpoint for this worker, or None
    when there is nothing to send (none due, none whose turn has come, endpoint off or at its limit).

    The lease runs HUB_LEASE_SECONDS: the caller keeps it alive while it sends the batch
    (routing.leases.lease_held, up to the batch's hold_until), so a worker that dies holds the
    deliveries, and the endpoint's in-flight slot, no longer than that.

    On PostgreSQL it is one round trip: the endpoint's row lock and the claiming UPDATE as two
    statements of one query, which PostgreSQL runs as one transaction, each statement with a
    snapshot of its own. The UPDATE's in-flight count therefore sees every claim committed before
    the lock was granted, so a limit of N means N, not N plus whatever raced past the count."""
    now = timezone.now()
    limit = subscription_max_in_flight(sub)
    claim = secrets.randbits(62) + 1
    hold = lease_seconds(sub, budget=budget)
    hold_until = now + timedelta(seconds=hold)
    lease = now + timedelta(seconds=min(settings.HUB_LEASE_SECONDS, hold))
    at = connection.ops.adapt_datetimefield_value(now)
    postgresql = connection.vendor == "postgresql"
    sendable, sendable_params = _sendable(
        sub_id=sub.pk, at=at, batch=settings.HUB_DELIVERY_BATCH_SIZE, only=only, postgresql=postgresql
    )
    within_limit = f" AND ({_IN_FLIGHT}) < %s" if limit else ""
    # PostgreSQL: the rows taken looked up by their keys (joined as IN, it could scan the table);
    # rows another worker is claiming are theirs: waiting for them would only find them taken.
    taken = f"id = ANY(ARRAY({sendable} FOR UPDATE OF d SKIP LOCKED))" if postgresql else f"id IN ({sendable})"
    # PostgreSQL: every column of the rows taken, for the events' join below; SQLite: their ids.
    returning = _CLAIMED_RETURNING if postgresql else "id"
    update = f"""
        UPDATE {_DELIVERY} SET state = '{DeliveryState.DELIVERING}', attempt_count = attempt_count + 1,
            lease_expires_at = %s, claim = %s, updated_at = %s
        WHERE {taken}
        AND EXISTS (SELECT 1 FROM {_SUBSCRIPTION} s WHERE s.id = %s AND s.is_enabled){within_limit}
        RETURNING {returning}"""
    params: list[Any] = [connection.ops.adapt_datetimefield_value(lease), claim, at, *sendable_params]
    params += [sub.pk] + ([sub.pk, at, limit] if limit else [])
    if postgresql:
        deliveries = _claim_postgresql(update, params, sub_id=sub.pk, lock=bool(limit))
    else:
        with connection.cursor() as cursor:
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
    return Batch(subscription=sub, claim=claim, deliveries=deliveries, hold_until=hold_until)


_LOCK = f"SELECT 1 FROM {_SUBSCRIPTION} WHERE id = %s FOR NO KEY UPDATE"


def _claim_postgresql(update: str, params: list[Any], *, sub_id: int, lock: bool) -> list[Delivery]:
    """The claim on PostgreSQL: the claimed rows come back with their events and stores in the
    same statement (the ORM read after the claim was a second one, and compiling it cost more CPU
    than running it).

    Prepared once per connection (DB_PREPARED_STATEMENTS): planning the claim took longer than
    running it, and a long chain of one order makes one claim per delivery. With an in-flight
    limit, the endpoint's row lock comes first, as a statement of its own in the same
    transaction: the UPDATE's snapshot, taken after the lock is granted, then sees every claim
    committed before, so a limit of N means N, not N plus whatever raced past the count. NO KEY:
    claims queue up on each other, but not on the pushes inserting this endpoint's deliveries
    (their foreign key takes a KEY SHARE lock on the row until their commit)."""
    statement = _numbered(f"WITH claimed AS ({update}){_CLAIMED_WITH_EVENTS}")
    with transaction.atomic():
        with connection.cursor_server_bound(prepared=settings.DB_PREPARED_STATEMENTS) as cursor:
            if lock:
                cursor.execute(_numbered(_LOCK), [sub_id])
            cursor.execute(statement, params)
            return [_claimed_delivery(row) for row in cursor.fetchall()]


@functools.lru_cache(maxsize=64)
def _numbered(sql: str) -> str:
    """%s placeholders as PostgreSQL's $1, $2, ... (the claim's SQL has no other % sign)."""
    parts = sql.split("%s")
    return "".join(part + (f"${index}" if index < len(parts) else "") for index, part in enumerate(parts, 1))


def _claimed_delivery(row: tuple[Any, ...]) -> Delivery:
    delivery, at = row_instance(Delivery, row, 0)
    event, at = row_related(delivery, "event", row, at)
    row_related(event, "store", row, at)
    return delivery
