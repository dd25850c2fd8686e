"""When to try a delivery again: schedule, jitter, Retry-After, and which answers end it for good."""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# Seconds to wait after the first, second, ... failed attempt (Standard Webhooks recommendation).
STANDARD_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)

# Statuses whose Retry-After header is a promise about when to come back.
RETRY_AFTER_STATUSES = frozenset({429, 503})


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"
    # 410 Gone: the endpoint says it no longer exists; stop and disable the subscription.
    GONE = "gone"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    delay_seconds: float | None = None


def schedule_validate(schedule: object) -> None:
    """Raise ValueError with a sentence unless `schedule` is a list of non-negative seconds."""
    if schedule in (None, ""):
        return
    if not isinstance(schedule, list):
        raise ValueError("A retry schedule must be a list of seconds, e.g. [5, 300, 1800].")
    for index, item in enumerate(schedule, start=1):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0:
            raise ValueError(f"Retry {index} of the schedule must be a number of seconds, zero or more.")


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def jittered(seconds: float, jitter: float, rng: random.Random | None = None) -> float:
    """Spread retries by +/- `jitter` (a fraction) so that endpoints coming back are not stampeded."""
    if seconds <= 0 or jitter <= 0:
        return max(0.0, seconds)
    factor = (rng or random).uniform(1 - jitter, 1 + jitter)
    return seconds * factor


def decide(
    *,
    succeeded: bool,
    status_code: int | None,
    attempt_number: int,
    schedule: Sequence[float],
    retries_enabled: bool = True,
    retry_after: float | None = None,
    retry_after_max: float = 86400,
    jitter: float = 0.0,
    rng: random.Random | None = None,
    permanent: bool = False,
) -> Decision:
    """What happens after attempt `attempt_number` (1-based); a `permanent` failure ends the delivery."""
    if succeeded:
        return Decision(Verdict.DELIVERED)
    if status_code == 410:
        return Decision(Verdict.GONE)
    if permanent or not retries_enabled or attempt_number > len(schedule):
        return Decision(Verdict.FAILED)
    delay = jittered(float(schedule[attempt_number - 1]), jitter, rng)
    if retry_after is not None and status_code in RETRY_AFTER_STATUSES:
        delay = max(delay, min(retry_after, retry_after_max))
    return Decision(Verdict.RETRY, delay)
