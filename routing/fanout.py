"""The fan-out: one new event's deliveries to several endpoints, claimed in one statement, sent at
once from threads, recorded in one transaction, instead of a pump per endpoint.

What it may take, it takes as a pump's claim would (routing.claim): a due delivery, its endpoint
enabled and below its in-flight limit, the first of its resource still owed to that endpoint.
Each endpoint's share is a claim of its own, with its own short lease renewed by the heartbeat
(routing.leases), so the limit, the sweeper and the fence on recording see what they see of a pump's
batch of one. What it may not take it leaves to the endpoints' pumps, woken at once, or where a
delivery is on the wire to the claim that holds it, which looks again once done; once its
outcomes are committed it wakes its endpoints that have something due (a delivery its claim held
back, a push coalesced into its message): each one's oldest due delivery in one fan-out message, a
backlog in its pumps. A pump claims again after its commit, and so does the fan-out, through the
messages it publishes.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from events.models import Event
from routing import sql
from routing.claim import Batch, lease_seconds
from routing.close import outcomes_log, outcomes_take, retries_wake
from routing.formats import TRANSFORM
from routing.leases import lease_held
from routing.models import DELIVERY_OPEN_STATES, Delivery, DeliveryState, Subscription
from routing.pacing import batch_sent
from routing.perprocess import PerProcess
from routing.record import batches_outcomes_record
from routing.replies import reply_has_content
from routing.rows import row_instance, row_related
from routing.send import Sent, attempts_count, delivery_send
from routing.status import events_status_refresh
from routing.transport.gate import WriteGate
from routing.wakeup import PUMP_TASK, deliveries_wake, pumps_enqueue

logger = logging.getLogger(__name__)


@dataclass
class FanOutResult:
    # The verdict of each delivery it sent and recorded, by delivery id.
    verdicts: dict[int, str] = field(default_factory=dict)
    # Endpoints whose named delivery it did not take, still owed: their pumps were woken.
    left: list[int] = field(default_factory=list)
    # Those of them with a delivery on the wire (another claim holds a slot): left to its holder,
    # which looks again once it is recorded, so no pump was woken.
    held: list[int] = field(default_factory=list)
    # Endpoints it sent to with something due once it was done: they were woken.
    due: list[int] = field(default_factory=list)
    # The messages that woke them, (task, arguments): each one's oldest due in a fan-out, or a
    # backlog's pumps.
    woken: list[tuple[str, list[Any]]] = field(default_factory=list)


def deliveries_fan_out(*, delivery_ids: list[int], endpoints: Sequence[int] = ()) -> FanOutResult:
    """Send these deliveries (one event's, one per endpoint) at once, each in its own thread, and
    record them in one transaction (more only when several endpoints' rows must be written).

    `endpoints`: those whose pending marks the task cleared, which a push may have coalesced into
    its message: each is woken at the end if something is due there, whatever this call took."""
    result = FanOutResult()
    batches = fanout_claim(delivery_ids)
    taken = {d.pk for b in batches for d in b.deliveries}
    left = [pk for pk in delivery_ids if pk not in taken]
    if left:
        result.left, result.held = _left_owed(left)
        pumps_enqueue(result.left, coalesce=True)
    if batches:
        with ExitStack() as held:
            # Each endpoint's claim kept alive until its outcome is recorded, as a pump's batch.
            for batch in batches:
                held.enter_context(
                    lease_held(subscription_id=batch.subscription.pk, claim=batch.claim, hold_until=batch.hold_until)
                )
            sent = _send_all(batches)
            result.verdicts = _close(batches, sent)
        for batch, s in zip(batches, sent, strict=True):
            # The endpoint's pace for its pumps' batches (routing.pacing): a slow one first met here
            # gets a first pump batch its budget can send, not a whole one given back mostly unsent.
            batch_sent(batch.subscription.pk, seconds=s.result.latency_ms / 1000, requests=1)
    looked = {*result.left, *result.held}
    others = sorted({*endpoints, *(b.subscription.pk for b in batches)} - looked)
    if others:
        result.due, result.woken = _due_wake(others)
    return result


def _left_owed(delivery_ids: list[int]) -> tuple[list[int], list[int]]:
    """The endpoints of those deliveries it did not take that are still owed (held back, at the
    limit, off, or taken by a pump first and not yet sent): those for their pumps, and those with a
    delivery on the wire. The claim holding such an endpoint's slot looks again once recorded (a
    pump claims again, a fan-out wakes what is due): a pump woken here, as overlapping fan-outs of
    a steady stream are, would find the limit taken and end."""
    # A lease run out is no holder (a dead worker's): the claim's limit does not count it either.
    on_wire = Delivery.objects.filter(
        subscription_id=OuterRef("subscription_id"), state=DeliveryState.DELIVERING, lease_expires_at__gt=timezone.now()
    )
    owed = (
        Delivery.objects.filter(pk__in=delivery_ids, state__in=DELIVERY_OPEN_STATES)
        .annotate(held=Exists(on_wire))
        .values_list("subscription_id", "held")
    )
    by_endpoint = dict(owed)
    return (
        sorted(i for i, held in by_endpoint.items() if not held),
        sorted(i for i, held in by_endpoint.items() if held),
    )


def fanout_claim(delivery_ids: list[int]) -> list[Batch]:
    """Take those of the named deliveries that may go now, each as a batch of one under a claim of
    its endpoint's own; in endpoint order.

    PostgreSQL: the limited endpoints' rows are locked first, in id order, in the claim's
    transaction (as batch_claim's lock: the UPDATE's snapshot, taken after, sees every claim
    committed before), then one UPDATE takes the deliveries and brings back their events,
    subscriptions and stores; the two statements go in one round trip (a pipeline: the server
    still runs the UPDATE, and takes its snapshot, only once the lock is held). SQLite: its BEGIN
    IMMEDIATE makes claims one at a time.

    Deliveries of one event share one Event instance, and so its payload as read once."""
    ids = sorted(set(delivery_ids))
    if not ids:
        return []
    now = timezone.now()
    token = secrets.randbits(62) + 1
    # A whole HUB_LEASE_SECONDS, the lease the heartbeat's rounds are paced for (a quarter of it):
    # a shorter one (the margin was) can run out before its first round and be swept mid-request.
    lease = now + timedelta(seconds=settings.HUB_LEASE_SECONDS)
    at = connection.ops.adapt_datetimefield_value(now)
    default = settings.HUB_SUBSCRIPTION_MAX_IN_FLIGHT
    head: list[Any] = [connection.ops.adapt_datetimefield_value(lease), token, at]
    tail: list[Any] = [at, default, at, default]
    if connection.vendor == "postgresql":
        with transaction.atomic():
            with (
                connection.cursor_server_bound(prepared=settings.DB_PREPARED_STATEMENTS) as cursor,
                connection.wrap_database_errors,
                connection.connection.pipeline(),
            ):
                cursor.execute(sql.fanout_lock(), [ids, default])
                cursor.execute(sql.fanout_claim(0, postgresql=True), [*head, ids, *tail])
                rows = cursor.fetchall()
        deliveries = _claimed_deliveries(rows)
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql.fanout_claim(len(ids), postgresql=False), [*head, *ids, *tail])
            taken = [row[0] for row in cursor.fetchall()]
        deliveries = list(
            Delivery.objects.select_related("event", "event__store", "subscription", "subscription__store")
            .only(*sql.claimed_only("subscription__store"), *_SUBSCRIPTION_WHOLE)
            .filter(pk__in=taken)
            .order_by("subscription_id", "id")
        )
        _events_shared(deliveries)
    # Sent at once, a thread each: no pump's budget to wait for, only the process's one mapping
    # sandbox (routing.transform), which renders one request at a time.
    mapped = sum(1 for d in deliveries if d.subscription.payload_format == TRANSFORM or d.subscription.transform)
    budget = mapped * settings.HUB_TRANSFORM_SECONDS
    batches: list[Batch] = []
    for delivery in deliveries:
        sub = delivery.subscription
        # Never short of the first lease: the pump's lease is the hold limit itself when that is
        # shorter, which one statement for several endpoints cannot write.
        hold_until = max(now + timedelta(seconds=lease_seconds(sub, budget=budget)), lease)
        batches.append(Batch(subscription=sub, claim=token + sub.pk, deliveries=[delivery], hold_until=hold_until))
    return batches


def _claimed_deliveries(rows: list[tuple[Any, ...]]) -> list[Delivery]:
    """The claim's rows as deliveries, the columns it left out deferred (sql.fanout_claim); an
    event's columns are on its first row only, and its other deliveries get the same instance."""
    deliveries: list[Delivery] = []
    events: dict[int, Event] = {}
    for row in rows:
        delivery, at = row_instance(Delivery, row, 0, sql.CLAIMED_DELIVERY_FIELDS)
        if row[at] is not None:
            event, _ = row_related(delivery, "event", row, at, sql.CLAIMED_EVENT_FIELDS)
            row_related(event, "store", row, at + _EVENT_WIDTH, sql.CLAIMED_STORE_FIELDS)
            events[event.pk] = event
        at += _EVENT_WIDTH + _STORE_WIDTH
        sub, at = row_related(delivery, "subscription", row, at)
        row_related(sub, "store", row, at, sql.CLAIMED_STORE_FIELDS)
        deliveries.append(delivery)
    _events_shared(deliveries, events)
    return deliveries


_SUBSCRIPTION_WHOLE = [f"subscription__{f.name}" for f in Subscription._meta.concrete_fields]
_EVENT_WIDTH = len(sql.CLAIMED_EVENT_FIELDS)
_STORE_WIDTH = len(sql.CLAIMED_STORE_FIELDS)


def _events_shared(deliveries: list[Delivery], events: dict[int, Event] | None = None) -> None:
    """Deliveries of one event made to share one Event instance (`events`' by id, else the first
    delivery's): one payload object, read and checked once for all its requests."""
    events = {} if events is None else events
    event_field = Delivery._meta.get_field("event")
    for delivery in deliveries:
        known = events.get(delivery.event_id)
        if known is None:
            events[delivery.event_id] = delivery.event
        else:
            event_field.set_cached_value(delivery, known)


class _Pools:
    """Idle thread pools of this process, each as wide as a fan-out: a fan-out takes one of its own,
    so that each of its requests starts at once (the hold limit counts no wait for a thread),
    and gives it back; a pool's threads keep their keep-alive sessions (routing.transport.exchange)
    from one fan-out to the next."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[tuple[int, ThreadPoolExecutor]] = []

    @contextmanager
    def pool(self, width: int) -> Iterator[ThreadPoolExecutor]:
        with self.lock:
            wide = [item for item in self.idle if item[0] >= width]
            if wide:
                self.idle.remove(wide[0])
            taken = wide[0] if wide else None
        if taken is None:
            width = max(width, settings.HUB_FANOUT_MAX_ENDPOINTS)
            taken = (width, ThreadPoolExecutor(max_workers=width, thread_name_prefix="hub-fanout"))
        try:
            yield taken[1]
        except BaseException:
            # A time limit or a fault while its requests may still be on the wire: not reused.
            taken[1].shutdown(wait=False)
            raise
        with self.lock:
            self.idle.append(taken)


_pools = PerProcess(lambda: _Pools()).get


# The longest a fan-out's threads wait for each other's writes before reading their replies
# (routing.transport.gate): well above the time its requests take to go out.
_WRITE_GATE_SECONDS = 0.05


def _send_all(batches: list[Batch]) -> list[Sent]:
    """Each batch's delivery sent from a thread of its own; what each got, in the batches' order.
    Each exchange keeps its own wall-clock deadline (the watchdog watches each thread's exchange).
    Replies are read once every request is written (WriteGate), within _WRITE_GATE_SECONDS."""
    now = timezone.now()
    gate = WriteGate(len(batches), seconds=_WRITE_GATE_SECONDS)
    with _pools().pool(len(batches)) as pool:
        futures = [
            pool.submit(
                gate.run,
                delivery_send,
                batch.deliveries[0],
                sub=batch.subscription,
                parameters=list(batch.subscription.parameters or []),
                previous_secret=batch.subscription.previous_signing_secret_active(now),
            )
            for batch in batches
        ]
        sent = [future.result() for future in futures]
    attempts_count(sent)
    return sent


def _close(batches: list[Batch], sent: list[Sent]) -> dict[int, str]:
    """Everything that follows the sends; returns the verdicts recorded.

    One transaction for them all, in which at most one endpoint's row (or its replies' budgets of
    descendants) is written: as in a pump's, the budgets then come before the subscription's row.
    Each further endpoint that needs its row written (a failure, the end of a failing streak, a
    reply with content) is recorded in a transaction of its own, as its pump would: two fan-outs
    writing the same endpoints' rows in two orders could otherwise deadlock."""
    pairs = [(batch, [s]) for batch, s in zip(batches, sent, strict=True)]
    writes = [p for p in pairs if _writes_endpoint(p[0].subscription, p[1][0])]
    plain = [p for p in pairs if not _writes_endpoint(p[0].subscription, p[1][0])]
    verdicts: dict[int, str] = {}
    for group in [plain + writes[:1], *([p] for p in writes[1:])]:
        verdicts.update(_record(group))
    return verdicts


def _writes_endpoint(sub: Subscription, s: Sent) -> bool:
    """Whether recording this answer writes the endpoint's row: its standing changes, or the reply
    has something to take in (parameters, budgets of descendants)."""
    if not s.result.succeeded:
        return True
    return sub.failing_since is not None or reply_has_content(s.result.reply)


def _record(pairs: list[tuple[Batch, list[Sent]]]) -> dict[int, str]:
    now = timezone.now()
    with transaction.atomic():
        outcomes = batches_outcomes_record(pairs, now=now)
        for (batch, _), mine in sorted(zip(pairs, outcomes, strict=True), key=lambda item: item[0][0].subscription.pk):
            sub = batch.subscription
            outcomes_take(sub, mine, now=now)
        events_status_refresh(event_ids=[s.delivery.event_id for mine in outcomes for s, _ in mine])
        for (batch, _), mine in zip(pairs, outcomes, strict=True):
            retries_wake(batch.subscription, mine)
    verdicts: dict[int, str] = {}
    for (batch, _), mine in zip(pairs, outcomes, strict=True):
        outcomes_log(logger, batch.subscription, mine, fan_out=True)
        verdicts.update({s.delivery.pk: str(d.verdict) for s, d in mine})
    return verdicts


def _due_wake(subscription_ids: list[int]) -> tuple[list[int], list[tuple[str, list[Any]]]]:
    """After the commit, as a pump claims again after its own: the endpoints with a delivery due
    now, and the messages that woke them. Each endpoint's oldest due delivery goes in one fan-out
    message, as a push's would (deliveries_wake): what is due here is mostly a push coalesced into
    this fan-out's message, an event to all of them, which a pump per endpoint would send with a
    claim and a commit each. One message per endpoint, as the pending marks assume (a fan-out per
    due event would be published again by every fan-out that ended before it began); the next of
    each is woken by that fan-out's end. A backlog, more due at one endpoint than half the
    endpoints due, is its pumps', which send it in batches."""
    per = len(subscription_ids) // 2 + 1
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    postgresql = connection.vendor == "postgresql"
    params = sql.endpoints_due_first_params(subscription_ids, now, per, postgresql=postgresql)
    with connection.cursor() as cursor:
        cursor.execute(sql.endpoints_due_first(len(subscription_ids), postgresql=postgresql), params)
        rows = sorted((endpoint, turn, delivery) for _, delivery, endpoint, turn in cursor.fetchall())
    counts = Counter(endpoint for endpoint, _, _ in rows)
    due = sorted(counts)
    if not due:
        return [], []
    if max(counts.values()) > len(due) // 2:
        return due, [(PUMP_TASK, [i]) for i in pumps_enqueue(due, coalesce=True)]
    firsts = {endpoint: delivery for endpoint, _, delivery in reversed(rows)}
    return due, deliveries_wake([(firsts[endpoint], endpoint) for endpoint in due])
