"""When a schedule runs (routing.schedules): its message, interval and cron expression checked
with a sentence per field, and its next run worked out. Pure functions: no database."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from croniter import croniter
from django.conf import settings

if TYPE_CHECKING:
    from routing.models import Schedule

# A pull's message: `get_orders` as the Spree-era endpoints name it, or a resource:action name.
_MESSAGE_RE = re.compile(r"^[a-z][a-z0-9_]*(?::[a-z][a-z0-9_]*)?$")


def schedule_validate(*, message: Any, interval_seconds: Any, cron: Any) -> dict[str, str]:
    """Each field's problem in one sentence, by field name; empty when the schedule is valid."""
    errors: dict[str, str] = {}
    if not isinstance(message, str) or not _MESSAGE_RE.match(message) or len(message) > 100:
        errors["message"] = (
            "The message must be lower case letters, digits and underscores, e.g. get_orders "
            "(or a resource:action name)."
        )
    cron = (cron or "").strip() if isinstance(cron, str) else cron
    if interval_seconds in (None, "") and not cron:
        errors["interval_seconds"] = "Give an interval in seconds or a cron expression."
    elif interval_seconds not in (None, "") and cron:
        errors["cron"] = "Give an interval or a cron expression, not both."
    elif cron:
        if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
            errors["cron"] = "Not a cron expression of five fields (minute hour day month weekday), e.g. */15 * * * *."
    else:
        minimum = settings.HUB_SCHEDULE_MIN_INTERVAL_SECONDS
        if isinstance(interval_seconds, bool) or not isinstance(interval_seconds, int) or interval_seconds < minimum:
            errors["interval_seconds"] = f"The interval must be a whole number of seconds, at least {minimum:g}."
    return errors


def schedule_next_run(schedule: Schedule, *, now: datetime, slot: datetime | None = None) -> datetime:
    """When a schedule runs next, after the run due at `slot` (or, with none, from now on): the
    next cron time after now, or the first of slot + n x interval after now. A schedule with no
    run behind it starts at once (interval) or at its next cron time."""
    if schedule.cron:
        return croniter(schedule.cron, now.astimezone(UTC)).get_next(datetime)
    interval = timedelta(seconds=schedule.interval_seconds or settings.HUB_SCHEDULE_MIN_INTERVAL_SECONDS)
    base = slot or schedule.last_run_at
    if base is None:
        return now
    if base + interval > now:
        return base + interval
    # Late by one interval or many: the one catch-up run is this one, the next is on the grid.
    return base + interval * (math.floor((now - base) / interval) + 1)
