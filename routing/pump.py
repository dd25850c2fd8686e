"""The pump: one endpoint's due deliveries, a batch at a time, until none is left or its time is up.

Each round reads as the pipeline does: size a batch to the endpoint's pace (routing.pacing) ->
claim it (routing.claim) -> send it (routing.send) -> record the outcomes and attempts
(routing.record) -> take in the replies (routing.replies) -> the endpoint's standing
(routing.record) -> the events' statuses (routing.status) -> wake a pump for the retries due soon
(routing.wakeup); all that follows the send is one transaction.

An endpoint's in-flight limit counts batches, and a batch has one request on the wire at a time. A
batch takes a resource's deliveries only from its oldest unfinished one on (its head, whose turn
has come), with the open, due ones that follow it in a row, and sends them in id order; one that
does not succeed holds back the rest of its resource, which go back unsent. So one order's events
reach an endpoint in the order the hub accepted them, a long chain a batch at a time. A pump whose
time is up hands the endpoint to a fresh task in the backlog lane (routing.wakeup): other
endpoints' new deliveries go first.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from routing.claim import Batch, batch_claim, subscription_read
from routing.close import outcomes_log, outcomes_take, retries_wake
from routing.leases import lease_held
from routing.models import Delivery, Subscription
from routing.pacing import batch_sent, batch_size
from routing.record import outcomes_record
from routing.send import Sent, batch_send
from routing.standing import subscription_max_in_flight
from routing.status import events_status_refresh
from routing.wakeup import TURN_LANE, TURN_NEW, backlog_unmark, pumps_enqueue

logger = logging.getLogger(__name__)


@dataclass
class PumpResult:
    # The verdict of each delivery this pump sent and recorded, by delivery id.
    verdicts: dict[int, str] = field(default_factory=dict)
    # Stopped at its time budget with deliveries left: another pump for the endpoint was queued.
    handed_on: bool = False
    # Wake-ups it published for more pumps of the same endpoint (a backlog, see _helper_wake).
    helpers: int = 0


def deliveries_pump(*, subscription_id: int, marked: bool = False) -> PumpResult:
    """Send one endpoint's due deliveries until none is left, within its turn (turn_seconds).
    `marked`: a pump from the backlog lane, which takes the endpoint's mark off when done.

    Nothing is sent for a disabled endpoint, or when its in-flight limit is taken: the tasks that
    hold it go on until nothing is due, so they also send what this one would have."""
    budget = turn_seconds()
    deadline = time.monotonic() + budget
    outcome = PumpResult()
    # Read once for the pump's few seconds; every round's claim checks that it is still enabled and
    # brings its parameters as stored then.
    sub = subscription_read(subscription_id)
    while sub is not None:
        # As many as the endpoint's recent pace fits into the time left (routing.pacing).
        size = batch_size(sub.pk, remaining=deadline - time.monotonic())
        batch = batch_claim(sub=sub, budget=budget, size=size)
        if batch is None:
            if marked:
                # Unmarked, then one more look: a message dropped while the mark held is ours.
                backlog_unmark([sub.pk])
                marked = False
                continue
            break
        if _resources(batch) >= size:
            outcome.helpers += _helper_wake(sub)
        # The lease is short: the process's heartbeat keeps it alive until the batch is recorded.
        with lease_held(subscription_id=sub.pk, claim=batch.claim, hold_until=batch.hold_until):
            started = time.monotonic()
            sent, unsent = batch_send(batch, deadline=deadline)
            batch_sent(sub.pk, seconds=time.monotonic() - started, requests=len(sent))
            outcome.verdicts.update(_batch_close(batch, sent=sent, unsent=unsent))
        # Only the pump's time sends it on: what a failed delivery held back is not due until the
        # failed one's retry, and the next claim takes whatever else is.
        if time.monotonic() >= deadline:
            # A batch full or cut short means a backlog: the backlog lane, whose pump takes the mark
            # off. Else what comes is new work, whose push may have a message waiting already.
            behind = bool(unsent) or len(batch.deliveries) >= size
            turn = TURN_LANE if behind else TURN_NEW
            outcome.handed_on = bool(pumps_enqueue([subscription_id], coalesce=not behind, turn=turn))
            return outcome
    if marked:
        # A disabled or deleted endpoint: its mark must not drop the messages of its return.
        backlog_unmark([subscription_id])
    return outcome


def turn_seconds() -> float:
    """HUB_DELIVERY_PUMP_SECONDS, scattered by HUB_DELIVERY_PUMP_JITTER so that busy pool
    processes come free one after another, not all at once."""
    jitter = settings.HUB_DELIVERY_PUMP_JITTER
    return settings.HUB_DELIVERY_PUMP_SECONDS * random.uniform(1 - jitter, 1 + jitter)


def _batch_close(batch: Batch, *, sent: list[Sent], unsent: list[Delivery]) -> dict[int, str]:
    """Everything that follows the send, in one transaction; returns the verdicts it recorded."""
    sub = batch.subscription
    now = timezone.now()
    with transaction.atomic():
        mine = outcomes_record(batch, sent=sent, unsent=unsent, now=now)
        outcomes_take(sub, mine, now=now)
        events_status_refresh(event_ids=[s.delivery.event_id for s, _ in mine])
        retries_wake(sub, mine)
    outcomes_log(logger, sub, mine)
    return {s.delivery.pk: str(decision.verdict) for s, decision in mine}


def _resources(batch: Batch) -> int:
    """How many resources a batch holds (a delivery without a key is one of its own)."""
    return len({d.resource_key if d.resource_key is not None else -d.pk for d in batch.deliveries})


def _helper_wake(sub: Subscription) -> int:
    """A batch full of resources (as many as its claim asked for) means more are likely due: ask
    for another pump of this endpoint, so that a backlog is sent by as many processes as the
    endpoint's in-flight limit allows instead of one. A batch with room for runs took every
    resource whose turn had come: another pump would find none of theirs until this one is
    recorded. The helper's own claim checks the limit and the per-resource order, and the pending
    mark keeps one such message waiting at a time."""
    if subscription_max_in_flight(sub) == 1:
        return 0
    return len(pumps_enqueue([sub.pk], coalesce=True, turn=TURN_LANE))
