"""Recording a sent batch: each delivery's outcome under the claim's fence, one Attempt row per
request made, the unsent deliveries put back, and the endpoint's standing after its answers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, models

from routing import retry, sql
from routing.claim import Batch, deliveries_unclaim
from routing.leases import LEASE_EXPIRED_ERROR
from routing.models import Attempt, Delivery, DeliveryState, Subscription
from routing.reply_forms import attempt_summary
from routing.send import Sent
from routing.standing import subscription_disable, subscription_failing
from routing.transport.exchange import ExchangeResult

logger = logging.getLogger(__name__)

# A sent delivery with the decision on it, for a delivery this batch still holds.
Outcome = tuple[Sent, retry.Decision]


def retry_terms(*, schedule: Sequence[float] | None, enabled: bool, origin: str) -> dict[str, Any]:
    """retry.decide's schedule and retries_enabled for an endpoint's delivery: its own schedule or
    the hub's, and no retry of a test event (origin "test:..."), which is tried once."""
    return {
        "schedule": schedule if schedule is not None else settings.HUB_RETRY_SCHEDULE,
        "retries_enabled": enabled and not origin.startswith("test:"),
    }


def outcomes_decide(batch: Batch, sent: list[Sent], *, now: datetime) -> list[retry.Decision]:
    """What each answer means for its delivery: delivered, retried (when), failed or gone."""
    sub = batch.subscription
    return [
        retry.decide(
            succeeded=s.result.succeeded,
            status_code=s.result.status_code,
            attempt_number=s.delivery.attempt_count,
            **retry_terms(schedule=sub.retry_schedule, enabled=sub.retry_enabled, origin=s.delivery.event.origin),
            retry_after=retry.retry_after_seconds(s.result.retry_after, now=now),
            retry_after_max=settings.HUB_RETRY_AFTER_MAX_SECONDS,
            jitter=settings.HUB_RETRY_JITTER,
            permanent=s.result.permanent,
        )
        for s in sent
    ]


def outcomes_record(batch: Batch, *, sent: list[Sent], unsent: list[Delivery], now: datetime) -> list[Outcome]:
    """Each sent delivery's outcome and attempt, and the unsent ones back as they were; inside the
    caller's transaction. Returns the outcomes of the deliveries still this batch's, in claim order.

    Fenced on the claim: a delivery whose lease ran out and that the sweeper handed to someone
    else is theirs now; ours is only the attempt row. A batch mostly ends one way (all
    delivered): one UPDATE per distinct outcome. The outcomes go first, locking the rows in the
    order the sweeper does (delivery, then attempt), so the two never deadlock."""
    [mine] = batches_outcomes_record([(batch, sent)], now=now)
    if unsent:
        _unsent_return(batch, unsent, now=now)
    return mine


def batches_outcomes_record(batches: Sequence[tuple[Batch, list[Sent]]], *, now: datetime) -> list[list[Outcome]]:
    """outcomes_record for several batches at once (a fan-out's, one per endpoint), everything
    sent: one UPDATE per distinct outcome across them all and one INSERT of their attempts.
    Returns each batch's outcomes still its own, in claim order."""
    groups: dict[tuple[tuple[str, Any], ...], list[tuple[Outcome, int]]] = {}
    decided: list[list[Outcome]] = []
    for batch, sent in batches:
        outcomes = list(zip(sent, outcomes_decide(batch, sent, now=now), strict=True))
        decided.append(outcomes)
        for s, decision in outcomes:
            groups.setdefault(tuple(_changes(decision, s.result, now).items()), []).append(((s, decision), batch.claim))
    kept: set[int] = set()
    for key, members in groups.items():
        ids = [s.delivery.pk for (s, _), _ in members]
        claims = sorted({claim for _, claim in members})
        if batch_finish(ids, claims=claims, changes=dict(key)) == len(ids):
            kept.update(ids)
            continue
        # Some changed hands (rare: only a lease that ran out). Ours are those this UPDATE just
        # stamped: no claim any more, and this very updated_at.
        owned = set(Delivery.objects.filter(pk__in=ids, claim=None, updated_at=now).values_list("pk", flat=True))
        kept |= owned
        for (s, _), _ in members:
            if s.delivery.pk not in owned:
                logger.warning(
                    "delivery changed hands during the attempt; its outcome is the new holder's",
                    extra={"delivery_id": s.delivery.pk, "attempt": s.delivery.attempt_count},
                )
    # Claim order, whatever the grouping: the endpoint's standing follows its last answer.
    mine = [[(s, d) for s, d in outcomes if s.delivery.pk in kept] for outcomes in decided]
    _attempts_record([s for _, sent in batches for s in sent], kept=kept)
    return mine


def _changes(decision: retry.Decision, result: ExchangeResult, now: datetime) -> dict[str, Any]:
    changes: dict[str, Any] = {
        "lease_expires_at": None,
        "claim": None,
        # An answer clears a mark the sweeper left: the delivery goes in batches again.
        "send_alone": False,
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


def _unsent_return(batch: Batch, unsent: list[Delivery], *, now: datetime) -> None:
    """Deliveries the pump had no time for go back as they were before the claim (a send_alone
    mark stays: they got no answer)."""
    deliveries_unclaim([d.pk for d in unsent], claims=[batch.claim], now=now)


def batch_finish(ids: list[int], *, claims: Sequence[int], changes: dict[str, Any]) -> int:
    """UPDATE the deliveries of `ids` still delivering under one of `claims` (the fence: one whose
    lease ran out and that the sweeper handed on is no longer this batch's) with `changes`, values
    through their fields, as Delivery.objects.filter(...).update(**changes) would; how many it changed."""
    fields = [Delivery._meta.get_field(name) for name in changes]
    params = [f.get_db_prep_save(changes[f.name], connection) for f in fields]
    params += [*ids, DeliveryState.DELIVERING, *claims]
    statement = sql.deliveries_finish(tuple(f.column for f in fields), len(ids), len(claims))
    # Server-bound (routing.sql.bound_cursor): a batch's UPDATE names 50 ids.
    with sql.bound_cursor() as cursor:
        cursor.execute(sql.bound(statement), params)
        return cursor.rowcount


def _attempts_record(sent: list[Sent], *, kept: set[int]) -> None:
    """One row per request made, whatever the fence decided: each was made. Should the batch's
    transaction fail, the leases run out and the sweeper records each attempt as unanswered, so
    no attempt goes unrecorded.

    A delivery that changed hands was reclaimed by the sweeper, which recorded this very attempt
    number as unanswered; the answer it did get replaces that guess (an INSERT would collide with
    it). Deliveries still ours cannot collide: their number is theirs since the claim.

    Written-out INSERTs (routing.sql.attempts_insert): bulk_create's compiling cost more CPU than
    the database's writing."""
    # The connection itself, not django.db.connection's proxy: each of its attribute reads (the
    # fields' preparing reads connection.ops) looks the connection up anew.
    db = connections[DEFAULT_DB_ALIAS]
    fresh = [_attempt_values(s, db) for s in sent if s.delivery.pk in kept]
    stale = [_attempt_values(s, db) for s in _guessed([s for s in sent if s.delivery.pk not in kept])]
    step = sql.attempts_per_insert()
    with sql.bound_cursor() as cursor:
        for rows, replace in ((fresh, False), (stale, True)):
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                statement = sql.bound(sql.attempts_insert(len(chunk), replace=replace))
                cursor.execute(statement, [v for row in chunk for v in row])


def _guessed(stale: list[Sent]) -> list[Sent]:
    """Of the attempts of deliveries that changed hands, those whose number holds the sweeper's
    guess, which their answer replaces. The others were given back unsent (a batch of several
    whose worker seemed dead, routing.sweeper): their number is the next claim's, so this attempt
    is only logged, never written where the next claim's answer goes."""
    if not stale:
        return []
    guesses = set(
        Attempt.objects.filter(delivery_id__in=[s.delivery.pk for s in stale], error=LEASE_EXPIRED_ERROR).values_list(
            "delivery_id", "number"
        )
    )
    for s in stale:
        if (s.delivery.pk, s.delivery.attempt_count) not in guesses:
            logger.warning(
                "an attempt of a delivery given back unsent meanwhile is not recorded",
                extra={"delivery_id": s.delivery.pk, "attempt": s.delivery.attempt_count, "error": s.result.error},
            )
    return [s for s in stale if (s.delivery.pk, s.delivery.attempt_count) in guesses]


def _attempt_values(s: Sent, db: Any) -> list[Any]:
    """An attempt's row in sql.attempt_fields() order, prepared as bulk_create prepares it."""
    result = s.result
    given = {
        "delivery_id": s.delivery.pk,
        "number": s.delivery.attempt_count,
        "started_at": s.started_at,
        "request_method": result.method,
        "request_url": result.url[:500],
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
        "response_headers": dict(result.response_headers),
        "response_body": result.response_body,
        "error": result.error,
        "succeeded": result.succeeded,
        "summary": attempt_summary(
            reply=result.reply,
            succeeded=result.succeeded,
            status_code=result.status_code,
            response_body=result.response_body,
        ),
    }
    return [
        field.get_db_prep_save(given[name] if name in given else field.get_default(), db) if prep else given[name]
        for name, field, prep in _attempt_layout()
    ]


# Fields whose values go in as they are: bulk_create's preparing leaves a str, int or bool unchanged.
_PLAIN_FIELDS = (models.CharField, models.TextField, models.IntegerField, models.BooleanField, models.ForeignKey)


@functools.cache
def _attempt_layout() -> list[tuple[str, Any, bool]]:
    """Each column's attname, field, and whether its value needs its field's preparing (a time,
    JSON, a column _attempt_values does not give)."""
    given = {"delivery_id", "number", "request_method", "request_url", "status_code", "latency_ms"}
    given |= {"response_body", "error", "succeeded", "summary"}
    return [(f.attname, f, not (f.attname in given and isinstance(f, _PLAIN_FIELDS))) for f in sql.attempt_fields()]


def endpoint_record(*, sub: Subscription, mine: list[Outcome], now: datetime) -> None:
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
