"""The sweeper (Celery beat): the database, not the broker, is the memory of what is owed."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, DateTimeField, Exists, OuterRef, Value, When
from django.utils import timezone

from routing import retry
from routing.claim import deliveries_unclaim
from routing.leases import LEASE_EXPIRED_ERROR
from routing.models import DELIVERY_OPEN_STATES, Attempt, Delivery, DeliveryState, Subscription
from routing.record import retry_terms
from routing.status import events_status_refresh
from routing.wakeup import TURN_LANE, pumps_enqueue

logger = logging.getLogger(__name__)

# What a delivery given back unsent says until its next answer (no attempt of it is recorded).
UNSENT_NOTE = "the worker sending its batch stopped before recording it; sent again alone, no attempt spent"


@dataclass(frozen=True)
class SweepResult:
    reclaimed: int
    enqueued: int
    # Of those reclaimed, given back unsent with no attempt spent (the rest were charged one).
    unsent: int = 0


def deliveries_sweep(*, now: datetime | None = None) -> SweepResult:
    """Take back expired leases and wake endpoints whose message was lost; a message too many costs a look.
    `now`: the time the sweep takes for now (tests: a sweep as it would run later)."""
    now = now or timezone.now()
    reclaimed, unsent, woken = leases_reclaim(now=now)
    # A lost endpoint is behind by then: the backlog lane, not ahead of others' new deliveries.
    lost = [i for i in endpoints_lost(now=now) if i not in woken]
    published = [*pumps_enqueue(woken), *pumps_enqueue(lost, turn=TURN_LANE)]
    if reclaimed or published:
        logger.info("sweep", extra={"reclaimed": reclaimed, "unsent": unsent, "enqueued": len(published)})
    return SweepResult(reclaimed=reclaimed, enqueued=len(published), unsent=unsent)


def leases_reclaim(*, now: datetime) -> tuple[int, int, list[int]]:
    """The deliveries whose lease ran out, taken back in one transaction: (reclaimed, of them given
    back unsent, their endpoints).

    A batch sends one request at a time, so of a dead worker's batch of several only one was on the
    wire, and the hub cannot tell which: none is charged, all go back as they were before the claim
    (no attempt spent, its number given back) and marked send_alone, so that each is sent next in a
    batch of its own. A batch of one is the request on the wire: charged an unanswered attempt, and
    failed once that spends its budget, so that a delivery that kills its worker every time ends
    up failed rather than sent forever. A first crash is taken as the worker's (a deploy, the OOM
    killer): its retry is due at once. One whose previous attempt also ended in a crash waits for
    the endpoint's schedule, as any failed attempt: else it would take down a worker every sweep.

    Rows a pump is recording right now are skipped (SKIP LOCKED), left to the next sweep."""
    expired = Delivery.objects.filter(state=DeliveryState.DELIVERING, lease_expires_at__lt=now)
    limit = settings.HUB_SWEEP_BATCH_SIZE
    with transaction.atomic():
        rows = list(
            expired.select_for_update(skip_locked=True, of=("self",))
            .order_by("claim", "id")
            .values(
                "id",
                "claim",
                "attempt_count",
                "last_error",
                "event_id",
                "subscription_id",
                "subscription__url",
                "subscription__retry_schedule",
                "subscription__retry_enabled",
                "event__origin",
            )[:limit]
        )
        sizes = Counter(row["claim"] for row in rows if row["claim"] is not None)
        last = rows[-1]["claim"] if len(rows) == limit else None
        if last is not None and any(row["claim"] != last for row in rows):
            # The limit may have cut the last claim's batch: how many it holds is the next sweep's to see.
            rows = [row for row in rows if row["claim"] != last]
        alone: list[dict[str, Any]] = []
        several: list[dict[str, Any]] = []
        for row in rows:
            (alone if row["claim"] is None or sizes[row["claim"]] == 1 else several).append(row)
        failed = _charge(alone, now=now)
        if several:
            claims = sorted({row["claim"] for row in several})
            ids = [row["id"] for row in several]
            deliveries_unclaim(ids, claims=claims, now=now, send_alone=True, last_error=UNSENT_NOTE)
        if failed:
            events_status_refresh(event_ids=[row["event_id"] for row in failed])
    charged = {row["id"] for row in alone}
    for row in rows:
        logger.warning(
            "reclaimed a delivery whose lease expired",
            extra={"delivery_id": row["id"], "charged": row["id"] in charged},
        )
    return len(rows), len(several), sorted({row["subscription_id"] for row in rows})


def _charge(rows: list[dict[str, Any]], *, now: datetime) -> list[dict[str, Any]]:
    """Each delivery sent alone whose lease ran out: an unanswered attempt, and retried (at once
    after a first crash, else when its endpoint's schedule says) or failed by its budget, in one
    UPDATE per verdict and one INSERT. Returns those failed."""
    if not rows:
        return []
    failed: list[dict[str, Any]] = []
    due: dict[int, datetime] = {}
    for row in rows:
        decision = _decision(row)
        if decision.verdict == retry.Verdict.FAILED:
            failed.append(row)
        elif row["last_error"] != LEASE_EXPIRED_ERROR:
            due[row["id"]] = now
        else:
            due[row["id"]] = now + timedelta(seconds=decision.delay_seconds or 0)
    changes = {"lease_expires_at": None, "claim": None, "last_error": LEASE_EXPIRED_ERROR, "last_status_code": None}
    # The rows are locked: still delivering with their lease run out, as the SELECT read them.
    if due:
        # Jitter gives each its own time: one CASE in the one UPDATE.
        when = Case(*(When(pk=pk, then=Value(at)) for pk, at in due.items()), output_field=DateTimeField())
        Delivery.objects.filter(pk__in=list(due)).update(
            **changes, state=DeliveryState.RETRYING, next_attempt_at=when, send_alone=True, updated_at=now
        )
    if failed:
        Delivery.objects.filter(pk__in=[row["id"] for row in failed]).update(
            **changes, state=DeliveryState.FAILED, send_alone=False, updated_at=now
        )
    # A stale worker's real answer may be in already: it is kept (ignore_conflicts).
    Attempt.objects.bulk_create(
        [
            Attempt(
                delivery_id=row["id"],
                number=row["attempt_count"],
                request_method="",
                request_url=row["subscription__url"],
                error=LEASE_EXPIRED_ERROR,
            )
            for row in rows
        ],
        ignore_conflicts=True,
    )
    return failed


def _decision(row: dict[str, Any]) -> retry.Decision:
    """What an unanswered attempt means for the delivery: retried after its schedule's delay (as
    any failed attempt, jittered), or failed once its budget is spent."""
    terms = retry_terms(
        schedule=row["subscription__retry_schedule"],
        enabled=row["subscription__retry_enabled"],
        origin=row["event__origin"],
    )
    return retry.decide(
        succeeded=False,
        status_code=None,
        attempt_number=row["attempt_count"],
        jitter=settings.HUB_RETRY_JITTER,
        **terms,
    )


def endpoints_lost(*, now: datetime) -> list[int]:
    """Enabled endpoints with a delivery due for longer than HUB_SWEEP_LOST_AFTER_SECONDS (its message
    lost) and none on the wire. One being sent to is not lost, only behind: its claim looks again
    once recorded, and a pump out of time hands the endpoint on. Woken at every sweep, a deep
    backlog's endpoints would each add a message to the queue every few seconds."""
    lost_before = now - timedelta(seconds=settings.HUB_SWEEP_LOST_AFTER_SECONDS)
    due = Delivery.objects.filter(
        subscription_id=OuterRef("pk"), state__in=DELIVERY_OPEN_STATES, next_attempt_at__lte=lost_before
    )
    sending = Delivery.objects.filter(
        subscription_id=OuterRef("pk"), state=DeliveryState.DELIVERING, lease_expires_at__gt=now
    )
    return list(
        Subscription.objects.filter(is_enabled=True)
        .filter(Exists(due))
        .exclude(Exists(sending))
        .order_by("id")
        .values_list("id", flat=True)
    )
