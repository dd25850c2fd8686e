"""Claiming an endpoint's due deliveries for one pump: a batch taken in one statement, within the
endpoint's in-flight limit and each resource's order (a resource's oldest unfinished delivery and
the open, due ones that follow it), read back with the events and stores the send needs, in the
order they are sent; and the pump's read of its endpoint. Written-out SQL throughout: the ORM took longer
to build these statements than the database to run them."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from events.models import Event, Store
from routing import sql
from routing.models import Delivery, DeliveryState, Subscription
from routing.rows import row_instance, row_related
from routing.standing import subscription_max_in_flight
from routing.transport.exchange import timeout_bounded


@dataclass
class Batch:
    subscription: Subscription
    claim: int
    deliveries: list[Delivery]
    # The latest its lease may be renewed to (lease_seconds).
    hold_until: datetime


def subscription_read(subscription_id: int) -> Subscription | None:
    """The endpoint with its store, as select_related("store") reads it, by written-out SQL: the
    ORM compiling the same query took more CPU than PostgreSQL running it, on every pump."""
    with connection.cursor() as cursor:
        cursor.execute(sql.subscription_with_store(), [subscription_id])
        row = cursor.fetchone()
    if row is None:
        return None
    sub, at = row_instance(Subscription, row, 0)
    row_related(sub, "store", row, at)
    return sub


def lease_seconds(sub: Subscription, *, budget: float) -> float:
    """The longest a batch's claim may be held: longer than the batch can keep any of its
    deliveries on the wire. The lease itself is short (HUB_LEASE_SECONDS) and renewed while the
    batch is sent (routing.leases), never past this hold limit.

    A batch sends until the pump's budget is spent, so its last request may start `budget` after
    the claim, and the exchange's deadline (routing.transport.deadline) ends that request at most the
    endpoint's timeout later, connect and reply included. The margin covers resolving the host
    (before the deadline can cut anything) and recording the batch."""
    return budget + timeout_bounded(sub.timeout_seconds) + settings.HUB_DELIVERY_LEASE_MARGIN_SECONDS


def batch_claim(*, sub: Subscription, budget: float, size: int | None = None) -> Batch | None:
    """Take up to `size` (HUB_DELIVERY_BATCH_SIZE) due deliveries of the endpoint for this worker, or None
    when there is nothing to send (none due, none whose turn has come, endpoint off or at its limit).
    A resource whose turn has come goes with as many of its following deliveries as are open and
    due, in a row: one order's chain takes a batch per claim, not a delivery.

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
    batch = size or settings.HUB_DELIVERY_BATCH_SIZE
    sendable_params = sql.sendable_params(sub.pk, at, batch, postgresql=postgresql)
    params: list[Any] = [connection.ops.adapt_datetimefield_value(lease), claim, at, *sendable_params]
    params += [sub.pk] + ([sub.pk, at, limit] if limit else [])
    statement = sql.claim(postgresql=postgresql, limited=bool(limit))
    if postgresql:
        deliveries, parameters = _claim_postgresql(statement, [*params, sub.pk], sub_id=sub.pk, lock=bool(limit))
    else:
        with connection.cursor() as cursor:
            # SQLite: the atomic block's BEGIN IMMEDIATE makes claims one at a time.
            with transaction.atomic():
                cursor.execute(statement, params)
                taken = [row[0] for row in cursor.fetchall()]
        deliveries = list(
            Delivery.objects.select_related("event", "event__store")
            .only(*sql.claimed_only())
            .annotate(subscription_parameters=F("subscription__parameters"))
            .filter(pk__in=taken)
        )
        parameters = deliveries[0].subscription_parameters if deliveries else None
        _stores_shared(deliveries)
    if not deliveries:
        return None
    # The batch sends the parameters stored when it was taken, not those of the pump's first read.
    sub.parameters = list(parameters or [])
    for delivery in deliveries:
        delivery.subscription = sub
    ordered = send_order(deliveries)
    kept = alone_cut(ordered)
    if len(kept) < len(ordered):
        deliveries_unclaim([d.pk for d in ordered[len(kept) :]], claims=[claim], now=now)
    return Batch(subscription=sub, claim=claim, deliveries=kept, hold_until=hold_until)


def alone_cut(ordered: list[Delivery]) -> list[Delivery]:
    """What of a batch (in send order) may go: a delivery marked send_alone goes in a batch of its
    own, so that a worker that dies sending it can be blamed on it (routing.sweeper); the batch
    before it goes without it. A prefix of the send order, so each resource's order holds."""
    first = next((place for place, d in enumerate(ordered) if d.send_alone), None)
    if first is None:
        return ordered
    return ordered[: first or 1]


def deliveries_unclaim(ids: list[int], *, claims: Sequence[int], now: datetime, **marks: Any) -> int:
    """Claimed deliveries that were not sent go back as they were before the claim: their attempt
    number given back, pending again if it was their first; fenced on their claims (tokens drawn
    at random: a delivery claimed again since holds none of them). `marks`: other fields to set.
    How many."""
    return Delivery.objects.filter(pk__in=ids, state=DeliveryState.DELIVERING, claim__in=claims).update(
        state=Case(When(attempt_count__gt=1, then=Value(DeliveryState.RETRYING)), default=Value(DeliveryState.PENDING)),
        attempt_count=F("attempt_count") - 1,
        lease_expires_at=None,
        claim=None,
        updated_at=now,
        **marks,
    )


def send_order(deliveries: list[Delivery]) -> list[Delivery]:
    """A batch in the order it is sent, the order the claim chose it in: each resource's first
    delivery in claim order (next_attempt_at, id), then each resource's second in the same turn,
    and so on. Each resource's deliveries go in id order, whatever their next_attempt_at (a head
    retried is due later than the deliveries it held back); one without a resource key is a
    resource of its own."""
    runs: dict[tuple[str | None, int], list[Delivery]] = {}
    for delivery in sorted(deliveries, key=lambda d: d.pk):
        key = delivery.resource_key
        runs.setdefault((key, 0) if key is not None else (None, delivery.pk), []).append(delivery)
    turns = sorted(runs.values(), key=lambda run: (run[0].next_attempt_at, run[0].pk))
    return [run[place] for place in range(max(map(len, turns), default=0)) for run in turns if place < len(run)]


def _claim_postgresql(statement: str, params: list[Any], *, sub_id: int, lock: bool) -> tuple[list[Delivery], Any]:
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
    with transaction.atomic():
        with connection.cursor_server_bound(prepared=settings.DB_PREPARED_STATEMENTS) as cursor:
            if lock:
                cursor.execute(sql.subscription_lock(), [sub_id])
            cursor.execute(statement, params)
            rows = cursor.fetchall()
    if not rows:
        return [], None
    field = Subscription._meta.get_field("parameters")
    stores: dict[int | None, Store | None] = {}
    return [_claimed_delivery(row, stores) for row in rows], field.from_db_value(rows[0][-1], None, connection)


def _claimed_delivery(row: tuple[Any, ...], stores: dict[int | None, Store | None]) -> Delivery:
    """A claimed row's delivery with its event and the event's store; `stores`: those of the
    batch's earlier rows by id, shared (a batch's events mostly come from one store, read only)."""
    delivery, at = row_instance(Delivery, row, 0, sql.CLAIMED_DELIVERY_FIELDS)
    event, at = row_related(delivery, "event", row, at, sql.CLAIMED_EVENT_FIELDS)
    if event.store_id in stores:
        _EVENT_STORE.set_cached_value(event, stores[event.store_id])
    else:
        stores[event.store_id], _ = row_related(event, "store", row, at, sql.CLAIMED_STORE_FIELDS)
    return delivery


def _stores_shared(deliveries: list[Delivery]) -> None:
    """The ORM's read (SQLite) gives each event a Store of its own; shared as PostgreSQL's are."""
    stores: dict[int | None, Store | None] = {}
    for delivery in deliveries:
        event = delivery.event
        _EVENT_STORE.set_cached_value(event, stores.setdefault(event.store_id, event.store))


_EVENT_STORE = Event._meta.get_field("store")
