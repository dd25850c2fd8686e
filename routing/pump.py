"""Sending an endpoint's deliveries: claim a batch of due ones, send them one after another over
one keep-alive connection, and record every attempt and outcome of the batch in one transaction.

An endpoint's in-flight limit counts batches, and a batch has one request on the wire at a time,
so a limit of 2 still means at most two requests to that endpoint at once. A batch takes at most
one delivery per resource, and only one no earlier delivery of that resource still holds back, so
one order's events reach an endpoint in the order the hub accepted them. A task goes on claiming
batches until nothing is due or its time is up, when it hands the endpoint to a fresh task: the
next delivery of an order follows its predecessor at once, without a round through the broker.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from infra import metrics, tracing
from routing import retry, transport
from routing.attempts import (
    attempt_outcome,
    events_status_refresh,
    replies_process,
    subscription_disable,
    subscription_failing,
    subscription_max_in_flight,
)
from routing.claims import Batch, batch_claim, batch_finish, subscription_read
from routing.dispatch import pumps_enqueue
from routing.leases import lease_held
from routing.models import (
    Attempt,
    Delivery,
    DeliveryState,
    Subscription,
)
from routing.returned_objects import objects_present
from routing.schedules import schedule_ticks_record

logger = logging.getLogger(__name__)

# A reply worth reading past its status: anything else ({} or a bare acknowledgement) needs no writes.
_REPLY_KEYS = ("notifications", "messages", "parameters")


@dataclass
class PumpResult:
    # The verdict of each delivery this pump sent and recorded, by delivery id.
    verdicts: dict[int, str] = field(default_factory=dict)
    # Stopped at its time budget with deliveries left: another pump for the endpoint was queued.
    handed_on: bool = False
    # Wake-ups it published for more pumps of the same endpoint (a backlog, see deliveries_pump).
    helpers: int = 0


@dataclass(frozen=True)
class _Sent:
    delivery: Delivery
    result: transport.ExchangeResult
    started_at: datetime


def deliveries_pump(*, subscription_id: int, only: Collection[int] | None = None) -> PumpResult:
    """Send one endpoint's due deliveries until none is left, within HUB_DELIVERY_PUMP_SECONDS.

    `only` restricts the pump to those deliveries and to a single batch (a synchronous attempt).
    Nothing is sent for a disabled endpoint, or when its in-flight limit is taken: the tasks that
    hold it go on until nothing is due, so they also send what this one would have."""
    budget = settings.HUB_DELIVERY_PUMP_SECONDS
    deadline = time.monotonic() + budget
    outcome = PumpResult()
    # Read once for the pump's few seconds; every round's claim checks that it is still enabled.
    sub = subscription_read(subscription_id)
    while sub is not None:
        batch = batch_claim(sub=sub, only=only, budget=budget)
        if batch is None:
            break
        if only is None and len(batch.deliveries) >= settings.HUB_DELIVERY_BATCH_SIZE:
            outcome.helpers += _helper_wake(sub)
        # The lease is short: the process's heartbeat keeps it alive until the batch is recorded.
        with lease_held(subscription_id=sub.pk, claim=batch.claim, hold_until=batch.hold_until):
            sent, unsent = _batch_send(batch, deadline=deadline)
            outcome.verdicts.update(_batch_record(batch, sent=sent, unsent=unsent))
        if only is not None:
            break
        if unsent or time.monotonic() >= deadline:
            # Other endpoints' messages wait behind this task: give them the process, and let a
            # fresh message carry on with this endpoint.
            outcome.handed_on = bool(pumps_enqueue([subscription_id]))
            break
    return outcome


def _helper_wake(sub: Subscription) -> int:
    """A full batch means more is likely due: ask for another pump of this endpoint, so that a
    backlog (after an outage, or pushed while no worker ran) is sent by as many processes as the
    endpoint's in-flight limit allows instead of one. All the broker had for such a backlog was
    one coalesced message, and one process sent 3,000 deliveries alone at ~950/s while three
    others idled. The helper's own claim checks the limit and the per-resource order (a message
    too many costs it one look), and the pending mark keeps one such message waiting at a time."""
    if subscription_max_in_flight(sub) == 1:
        return 0
    return len(pumps_enqueue([sub.pk], coalesce=True))


def delivery_attempt(*, delivery_id: int) -> str | None:
    """Try one delivery once, if it is due, its turn has come and the endpoint has a free slot.
    Returns the verdict, or None when nothing was sent."""
    subscription_id = delivery_subscription_id(delivery_id=delivery_id)
    if subscription_id is None:
        return None
    return deliveries_pump(subscription_id=subscription_id, only=[delivery_id]).verdicts.get(delivery_id)


def delivery_subscription_id(*, delivery_id: int) -> int | None:
    return Delivery.objects.filter(pk=delivery_id).values_list("subscription_id", flat=True).first()


def _batch_send(batch: Batch, *, deadline: float) -> tuple[list[_Sent], list[Delivery]]:
    """One request per delivery, in claim order, until the budget is spent (the rest go back)."""
    sub = batch.subscription
    previous_secret = sub.previous_signing_secret_active(timezone.now())
    sent: list[_Sent] = []
    for index, delivery in enumerate(batch.deliveries):
        if index and time.monotonic() >= deadline:
            return sent, batch.deliveries[index:]
        event = delivery.event
        started_at = timezone.now()
        span = tracing.attempt_start(delivery, sub)
        try:
            request = transport.request_build(
                url=sub.url,
                message=event.message,
                message_id=event.message_id,
                payload=event.payload,
                parameters=sub.parameters or [],
                webhook_id=str(event.uid),
                signing_secret=sub.signing_secret,
                previous_signing_secret=previous_secret,
                token=sub.token,
                store_name=_store_name(delivery),
                method_override=sub.http_method,
            )
            result = transport.request_send(
                request,
                timeout=sub.timeout_seconds,
                body_max_chars=settings.HUB_RESPONSE_BODY_MAX_CHARS,
                read_max_bytes=settings.HUB_RESPONSE_READ_MAX_BYTES,
            )
        except Exception as exc:  # noqa: BLE001 - one delivery's fault must not lose the batch's outcomes
            logger.exception("could not send a delivery", extra={"delivery_id": delivery.pk})
            result = transport.ExchangeResult(
                method="", url=sub.url, status_code=None, latency_ms=0, error=f"the hub could not send it: {exc!r}"
            )
        tracing.attempt_end(span, result)
        metrics.attempt_observe(attempt_outcome(result), result.latency_ms / 1000)
        sent.append(_Sent(delivery=delivery, result=result, started_at=started_at))
    return sent, []


def _store_name(delivery: Delivery) -> str:
    """X-Hub-Store names the store the endpoint is configured for, else the store that pushed the event."""
    if delivery.subscription.store is not None:
        return delivery.subscription.store.name
    if delivery.event.store is not None:
        return delivery.event.store.name
    return ""


def _changes(decision: retry.Decision, result: transport.ExchangeResult, now: datetime) -> dict[str, Any]:
    changes: dict[str, Any] = {
        "lease_expires_at": None,
        "claim": None,
        "last_status_code": result.status_code,
        "last_error": result.error,
        "updated_at": now,
    }
    if decision.verdict == retry.Verdict.DELIVERED:
        changes.update(state=DeliveryState.DELIVERED, delivered_at=now)
    elif decision.verdict == retry.Verdict.RETRY:
        changes.update(state=DeliveryState.RETRYING, next_attempt_at=now + timedelta(seconds=decision.delay_seconds))
    else:
        changes.update(state=DeliveryState.FAILED)
    return changes


def _batch_record(batch: Batch, *, sent: list[_Sent], unsent: list[Delivery]) -> dict[int, str]:
    """Attempts, outcomes, the endpoint's failure streak, replies and event statuses of a batch, in
    one transaction; unsent deliveries go back as they were. Returns the verdicts it recorded."""
    sub = batch.subscription
    now = timezone.now()
    schedule = sub.retry_schedule if sub.retry_schedule is not None else settings.HUB_RETRY_SCHEDULE
    decisions = [
        retry.decide(
            succeeded=s.result.succeeded,
            status_code=s.result.status_code,
            attempt_number=s.delivery.attempt_count,
            schedule=schedule,
            retries_enabled=sub.retry_enabled and not s.delivery.event.origin.startswith("test:"),
            retry_after=retry.retry_after_seconds(s.result.retry_after, now=now),
            retry_after_max=settings.HUB_RETRY_AFTER_MAX_SECONDS,
            jitter=settings.HUB_RETRY_JITTER,
            permanent=s.result.permanent,
        )
        for s in sent
    ]
    with transaction.atomic():
        # Fenced on the claim: a delivery whose lease ran out and that the sweeper handed to someone
        # else is theirs now; ours is only the attempt row. A batch mostly ends one way (all
        # delivered): one UPDATE per distinct outcome. The outcomes go first, locking the rows in
        # the order the sweeper does (delivery, then attempt), so the two never deadlock.
        groups: dict[tuple[tuple[str, Any], ...], list[tuple[_Sent, retry.Decision]]] = {}
        for s, decision in zip(sent, decisions, strict=True):
            groups.setdefault(tuple(_changes(decision, s.result, now).items()), []).append((s, decision))
        mine: list[tuple[_Sent, retry.Decision]] = []
        for key, members in groups.items():
            ids = [s.delivery.pk for s, _ in members]
            if batch_finish(ids, claim=batch.claim, changes=dict(key)) == len(ids):
                mine += members
                continue
            # Some changed hands (rare: only a lease that ran out). Ours are those this UPDATE just
            # stamped: no claim any more, and this very updated_at.
            owned = set(Delivery.objects.filter(pk__in=ids, claim=None, updated_at=now).values_list("pk", flat=True))
            for s, decision in members:
                if s.delivery.pk in owned:
                    mine.append((s, decision))
                else:
                    logger.warning(
                        "delivery changed hands during the attempt; its outcome is the new holder's",
                        extra={"delivery_id": s.delivery.pk, "attempt": s.delivery.attempt_count},
                    )
        # Claim order, whatever the grouping: the endpoint's standing follows its last answer.
        order = {s.delivery.pk: index for index, s in enumerate(sent)}
        mine.sort(key=lambda pair: order[pair[0].delivery.pk])
        _attempts_record(sent, mine=[s for s, _ in mine])
        verdicts = {s.delivery.pk: str(decision.verdict) for s, decision in mine}
        if unsent:
            Delivery.objects.filter(
                pk__in=[d.pk for d in unsent], state=DeliveryState.DELIVERING, claim=batch.claim
            ).update(
                state=Case(
                    When(attempt_count__gt=1, then=Value(DeliveryState.RETRYING)), default=Value(DeliveryState.PENDING)
                ),
                attempt_count=F("attempt_count") - 1,
                lease_expires_at=None,
                claim=None,
                updated_at=now,
            )
        # The replies before the endpoint's standing: they lock the root events' budgets of
        # descendants, which must come before the subscription's row in every batch.
        replies_process(
            [
                (s.delivery, s.result.reply)
                for s, decision in mine
                if decision.verdict == retry.Verdict.DELIVERED
                and isinstance(s.result.reply, Mapping)
                and (any(s.result.reply.get(key) for key in _REPLY_KEYS) or objects_present(s.result.reply))
            ]
        )
        schedule_ticks_record(
            subscription=sub, outcomes=[(s.delivery, s.result, str(d.verdict)) for s, d in mine], now=now
        )
        _endpoint_record(sub=sub, mine=mine, now=now)
        # Claiming leaves an event's status alone (one statement fewer per batch): it changes here,
        # when an attempt has ended, queued -> delivering on a retry, -> delivered or failed at the end.
        events_status_refresh(event_ids=[s.delivery.event_id for s, _ in mine])
        countdowns = sorted(
            {
                math.ceil(d.delay_seconds)
                for _, d in mine
                if d.verdict == retry.Verdict.RETRY and d.delay_seconds <= settings.HUB_RETRY_COUNTDOWN_MAX_SECONDS
            }
        )
        for countdown in countdowns:
            transaction.on_commit(lambda c=countdown: pumps_enqueue([sub.pk], countdown=c))
    for s, decision in mine:
        metrics.delivery_outcome_count(str(decision.verdict))
        logger.info(
            "delivery attempt",
            extra={
                "event_id": str(s.delivery.event.uid),
                "delivery_id": s.delivery.pk,
                "subscription": sub.name,
                "subscription_id": sub.pk,
                "attempt": s.delivery.attempt_count,
                "status_code": s.result.status_code,
                "latency_ms": s.result.latency_ms,
                "destination_host": urlsplit(s.result.url).hostname,
                "verdict": str(decision.verdict),
                "error": s.result.error[:200] or None,
            },
        )
    return verdicts


_ATTEMPT_FIELDS = (
    "started_at",
    "request_method",
    "request_url",
    "status_code",
    "latency_ms",
    "response_headers",
    "response_body",
    "error",
    "succeeded",
)


def _attempts_record(sent: list[_Sent], *, mine: list[_Sent]) -> None:
    """One row per request made, whatever the fence decided: each was made. Should the batch's
    transaction fail, the leases run out and the sweeper records each attempt as unanswered, so
    no attempt goes unrecorded.

    A delivery that changed hands was reclaimed by the sweeper, which recorded this very attempt
    number as unanswered; the answer it did get replaces that guess (an INSERT would collide with
    it). Deliveries still ours cannot collide: their number is theirs since the claim."""
    kept = {s.delivery.pk for s in mine}
    Attempt.objects.bulk_create([_attempt_row(s) for s in sent if s.delivery.pk in kept])
    stale = [_attempt_row(s) for s in sent if s.delivery.pk not in kept]
    if stale:
        Attempt.objects.bulk_create(
            stale, update_conflicts=True, unique_fields=["delivery", "number"], update_fields=_ATTEMPT_FIELDS
        )


def _attempt_row(s: _Sent) -> Attempt:
    result = s.result
    return Attempt(
        delivery_id=s.delivery.pk,
        number=s.delivery.attempt_count,
        started_at=s.started_at,
        request_method=result.method,
        request_url=result.url[:500],
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        response_headers=dict(result.response_headers),
        response_body=result.response_body,
        error=result.error,
        succeeded=result.succeeded,
    )


def _endpoint_record(*, sub: Subscription, mine: list[tuple[_Sent, retry.Decision]], now: datetime) -> None:
    """The endpoint's standing after a batch: 410 Gone turns it off; otherwise the batch's last
    answer decides whether it is failing (a streak that ends with a success is over)."""
    gone = next((s for s, d in mine if d.verdict == retry.Verdict.GONE), None)
    if gone is not None:
        subscription_disable(
            subscription_id=sub.pk,
            reason="the endpoint answered 410 Gone",
            event=gone.delivery.event,
            delivery=gone.delivery,
        )
        return
    if not mine:
        return
    last, decision = mine[-1]
    if decision.verdict == retry.Verdict.DELIVERED:
        if sub.failing_since is not None:
            # Read with the batch: an endpoint that was not failing then has nothing to clear
            # (one that started failing since keeps its mark until its next success).
            Subscription.objects.filter(pk=sub.pk, failing_since__isnull=False).update(failing_since=None)
            sub.failing_since = None
    else:
        subscription_failing(subscription=sub, now=now, delivery=last.delivery)
        # The pump's next batch reads it from here: a success must know there is a streak to end.
        sub.failing_since = sub.failing_since or now
