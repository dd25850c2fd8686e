"""What follows a sent batch inside its recording transaction, the same for a pump and a fan-out:
the replies taken in, schedule ticks, the endpoint's standing, retries woken; and the outcome log."""

from __future__ import annotations

import collections
import functools
import logging
import math
from datetime import datetime
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction

from infra import metrics
from infra.logrecords import records_log
from routing import retry
from routing.models import Subscription
from routing.record import Outcome, endpoint_record
from routing.replies import replies_process, reply_has_content
from routing.schedules import schedule_ticks_record
from routing.wakeup import pumps_enqueue


def outcomes_take(sub: Subscription, mine: list[Outcome], *, now: datetime) -> None:
    """The endpoint's recorded outcomes taken in, inside the caller's transaction."""
    # The replies before the endpoint's standing: they lock the root events' budgets of
    # descendants, which must come before the subscription's row in every batch.
    replies_process(
        [
            (s.delivery, s.result.reply)
            for s, decision in mine
            if decision.verdict == retry.Verdict.DELIVERED and reply_has_content(s.result.reply)
        ]
    )
    schedule_ticks_record(subscription=sub, outcomes=[(s.delivery, s.result, str(d.verdict)) for s, d in mine], now=now)
    endpoint_record(sub=sub, mine=mine, now=now)


def retries_wake(sub: Subscription, mine: list[Outcome]) -> None:
    """Retries due within HUB_RETRY_COUNTDOWN_MAX_SECONDS get a delayed wake-up once committed; later
    ones are the sweeper's."""
    countdowns = sorted(
        {
            math.ceil(d.delay_seconds)
            for _, d in mine
            if d.verdict == retry.Verdict.RETRY and d.delay_seconds <= settings.HUB_RETRY_COUNTDOWN_MAX_SECONDS
        }
    )
    for countdown in countdowns:
        transaction.on_commit(lambda c=countdown: pumps_enqueue([sub.pk], countdown=c))


def outcomes_log(logger: logging.Logger, sub: Subscription, mine: list[Outcome], *, fan_out: bool = False) -> None:
    """The outcomes counted, and one INFO line per attempt (built only when INFO is on)."""
    # Counted once per verdict of the batch, not once per delivery: the same totals.
    for verdict, count in collections.Counter(str(decision.verdict) for _, decision in mine).items():
        metrics.delivery_outcome_count(verdict, count=count)
    if not logger.isEnabledFor(logging.INFO):
        return
    extras = []
    for s, decision in mine:
        extra = {
            "event_id": str(s.delivery.event.uid),
            "delivery_id": s.delivery.pk,
            "subscription": sub.name,
            "subscription_id": sub.pk,
            "attempt": s.delivery.attempt_count,
            "status_code": s.result.status_code,
            "latency_ms": s.result.latency_ms,
            "destination_host": _hostname(s.result.url),
            "verdict": str(decision.verdict),
            "error": s.result.error[:200] or None,
        }
        if fan_out:
            extra["fan_out"] = True
        extras.append(extra)
    # The lines logger.info would write one by one, from one record copied (infra.logrecords).
    records_log(logger, logging.INFO, "delivery attempt", extras)


@functools.lru_cache(maxsize=256)
def _hostname(url: str) -> str | None:
    # A batch's deliveries go to one endpoint: its URL is parsed once, not once per log line.
    return urlsplit(url).hostname
