"""Schedules: the hub pulls from services that cannot push (PROTOCOL "Pulling", docs/protocol.md).

A schedule sends its message (`get_orders`) to its subscription's endpoint every interval or on a
cron expression. Each tick is an event delivered to that one subscription through the normal
pipeline (attempts, notifications, the objects it returns as child events); the parameters its
reply returns are saved on the subscription, only when it succeeded, and go out with the next one.

Each tick runs once however many schedulers look: the due schedules are locked (FOR UPDATE SKIP
LOCKED) and their next run moved on by a conditional UPDATE in the transaction that stores the
tick, so a second scheduler skips them and a scheduler killed midway leaves them due. A schedule
late by many intervals (an outage) makes one tick, and its next run is the first slot after now.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from events.models import Event, EventSource
from events.services import event_build, event_insert
from events.validation import Envelope
from routing.models import (
    DELIVERY_OPEN_STATES,
    Delivery,
    DeliveryState,
    Notification,
    NotificationLevel,
    Schedule,
    Subscription,
)
from routing.timing import schedule_next_run
from routing.wakeup import pumps_enqueue

logger = logging.getLogger(__name__)

# What a tick event's origin starts with; the schedule's id follows.
TICK_ORIGIN = "schedule:"
# The page a tick event asks for is the last part of its message_id.
_PAGE_RE = re.compile(r":p(\d+)$")


@dataclass(frozen=True)
class Tick:
    schedule_id: int
    delivery_id: int
    event_id: int
    # False when the schedule's previous tick was still open and was made due now instead.
    made: bool


def schedules_run(*, now: datetime | None = None) -> int:
    """Tick every running schedule that is due, a batch at a time, until none is left or the time
    budget (HUB_SCHEDULES_RUN_SECONDS) is spent; returns the ticks made or made due."""
    deadline = time.monotonic() + settings.HUB_SCHEDULES_RUN_SECONDS
    count = 0
    while True:
        moment = now or timezone.now()
        ticks = _batch_run(now=moment)
        count += len(ticks)
        if len(ticks) < settings.HUB_SCHEDULES_BATCH_SIZE or time.monotonic() >= deadline or now is not None:
            break
    return count


def _batch_run(*, now: datetime) -> list[Tick]:
    with transaction.atomic():
        due = list(
            Schedule.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(is_paused=False, next_run_at__lte=now, subscription__is_enabled=True)
            .select_related("subscription")
            .order_by("next_run_at", "id")[: settings.HUB_SCHEDULES_BATCH_SIZE]
        )
        open_ticks = _open_ticks(due)
        ticks: list[Tick] = []
        made: list[tuple[Schedule, Event, Delivery]] = []
        for schedule in due:
            slot = schedule.next_run_at
            assert slot is not None
            following = schedule_next_run(schedule, now=now, slot=slot)
            # The row lock makes this certain on PostgreSQL; on a database without one (SQLite)
            # the condition alone keeps a second scheduler from ticking the same slot.
            claimed = Schedule.objects.filter(pk=schedule.pk, next_run_at=slot, is_paused=False).update(
                next_run_at=following, last_run_at=now, updated_at=now
            )
            if not claimed:
                continue
            open_tick = open_ticks.get(schedule.pk)
            if open_tick is not None:
                ticks.append(_open_tick_due(schedule, open_tick, now=now))
                continue
            event, delivery = _tick_event(
                schedule, now=now, message_id=f"{TICK_ORIGIN}{schedule.pk}:{slot:%Y%m%dT%H%M%S}"
            )
            made.append((schedule, event, delivery))
        # The batch's deliveries in one statement.
        Delivery.objects.bulk_create([delivery for _, _, delivery in made])
        ticks += [Tick(schedule.pk, delivery.pk, event.pk, made=True) for schedule, event, delivery in made]
        if ticks:
            # Each schedule's tick, in one statement for the batch.
            latest = {t.schedule_id: t.event_id for t in ticks}
            changed = [s for s in due if s.pk in latest]
            for schedule in changed:
                schedule.last_event_id = latest[schedule.pk]
            Schedule.objects.bulk_update(changed, ["last_event"])
            endpoints = [s.subscription_id for s in due]
            transaction.on_commit(lambda: pumps_enqueue(endpoints, coalesce=True))
    if ticks:
        logger.info("schedules ticked", extra={"ticks": len(ticks)})
    return ticks


def _open_ticks(schedules: Sequence[Schedule]) -> dict[int, Delivery]:
    """The latest tick still open (pending, retrying or being sent) of each schedule, in one read."""
    if not schedules:
        return {}
    origins = {f"{TICK_ORIGIN}{s.pk}": s.pk for s in schedules}
    rows = (
        Delivery.objects.filter(
            subscription_id__in={s.subscription_id for s in schedules},
            state__in=(*DELIVERY_OPEN_STATES, DeliveryState.DELIVERING),
            event__origin__in=origins,
        )
        .select_related("event")
        .order_by("id")
    )
    return {origins[d.event.origin]: d for d in rows}


def _open_tick_due(schedule: Schedule, open_tick: Delivery, *, now: datetime) -> Tick:
    """The previous tick, still open (retrying after a failure), made due now instead of a new
    one, so ticks never pile up; one being sent now is left to finish."""
    if open_tick.state in DELIVERY_OPEN_STATES:
        Delivery.objects.filter(pk=open_tick.pk, state__in=DELIVERY_OPEN_STATES).update(
            next_attempt_at=now, updated_at=now
        )
    return Tick(schedule.pk, open_tick.pk, open_tick.event_id, made=False)


def _tick_event(schedule: Schedule, *, now: datetime, message_id: str) -> tuple[Event, Delivery]:
    """The tick event, stored in the caller's transaction, and its one delivery (not yet saved)."""
    envelope = Envelope(message=schedule.message, message_id=message_id[:255], payload={})
    event = event_build(
        store=None, envelope=envelope, origin=f"{TICK_ORIGIN}{schedule.pk}", source=EventSource.SCHEDULE
    )
    event.created_at = now
    event_insert(event, savepoint=False)
    return event, Delivery.routed(event=event, subscription=schedule.subscription)


def _tick(schedule: Schedule, *, now: datetime, message_id: str, next_page: bool = False) -> Tick:
    """One tick on its own (run now, or the next page of one that just ended): the open one made
    due, or a new one."""
    open_tick = None if next_page else _open_ticks([schedule]).get(schedule.pk)
    if open_tick is not None:
        return _open_tick_due(schedule, open_tick, now=now)
    event, delivery = _tick_event(schedule, now=now, message_id=message_id)
    delivery.save(force_insert=True)
    return Tick(schedule.pk, delivery.pk, event.pk, made=True)


def schedule_run_now(*, schedule_id: int) -> Tick:
    """A tick now, whatever the schedule's next run (which stays): the admin's "run now"."""
    now = timezone.now()
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().select_related("subscription").get(pk=schedule_id)
        message_id = f"{TICK_ORIGIN}{schedule.pk}:now:{now:%Y%m%dT%H%M%S.%f}"
        tick = _tick(schedule, now=now, message_id=message_id)
        Schedule.objects.filter(pk=schedule.pk).update(last_run_at=now, last_event_id=tick.event_id, updated_at=now)
        subscription_id = schedule.subscription_id
        transaction.on_commit(lambda: pumps_enqueue([subscription_id]))
    return tick


def schedule_save(*, schedule: Schedule, now: datetime | None = None) -> Schedule:
    """Save a created or edited schedule (validated by its clean()); its next run is worked out
    again when it runs, and kept when only its pause changed."""
    now = now or timezone.now()
    previous = Schedule.objects.filter(pk=schedule.pk).first() if schedule.pk else None
    timing_changed = previous is None or (previous.interval_seconds, previous.cron) != (
        schedule.interval_seconds,
        schedule.cron,
    )
    resumed = previous is not None and previous.is_paused and not schedule.is_paused
    if timing_changed or resumed or schedule.next_run_at is None:
        schedule.next_run_at = schedule_next_run(schedule, now=now)
    schedule.save()
    return schedule


def schedule_set_paused(*, schedule_id: int, paused: bool) -> bool:
    """Pause or resume; a resumed schedule runs at its next time from now. False when it already was so."""
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(pk=schedule_id)
        if schedule.is_paused == paused:
            return False
        schedule.is_paused = paused
        schedule_save(schedule=schedule)
    return True


# --- What a tick's reply means for its schedule ----------------------------------------------
def schedule_ticks_record(
    *,
    subscription: Subscription,
    outcomes: Sequence[tuple[Delivery, Any, str]],
    now: datetime,
) -> None:
    """After a batch's replies were taken in (routing.replies), in its transaction: each tick's
    schedule learns how it went, and a tick whose reply says there is more (HTTP 206, or a `page`
    parameter past the one sent) asks for the next page at once, up to HUB_SCHEDULE_MAX_PAGES.

    `subscription` is the pump's: its parameters are those the batch was sent with (the pump reads
    them again after the batch, so the next page goes out with the number its reply saved)."""
    ticks = [(d, r, v) for d, r, v in outcomes if d.event.origin.startswith(TICK_ORIGIN)]
    if not ticks:
        return
    sent_page = _page_number(_parameter(subscription.parameters, "page"))
    more: list[tuple[Delivery, int]] = []
    for delivery, result, verdict in ticks:
        changes: dict[str, Any] = {"last_event_id": delivery.event_id, "updated_at": now}
        if verdict == "delivered":
            changes.update(last_error="", last_succeeded_at=now)
            if _more_pages(result, sent_page=sent_page):
                more.append((delivery, _event_page(delivery.event)))
        else:
            error = result.error or (f"HTTP {result.status_code}" if result.status_code else "no answer")
            changes["last_error"] = error[:1000]
        Schedule.objects.filter(pk=_schedule_id(delivery.event)).update(**changes)
    for delivery, page in more:
        schedule = Schedule.objects.filter(pk=_schedule_id(delivery.event)).select_related("subscription").first()
        if schedule is None:
            continue
        if page >= settings.HUB_SCHEDULE_MAX_PAGES:
            Notification.objects.create(
                event=delivery.event,
                delivery=delivery,
                subscription=subscription,
                level=NotificationLevel.WARN,
                subject=f"Stopped after {page} pages",
                description=f"The endpoint still said there was more; a pull fetches at most "
                f"{settings.HUB_SCHEDULE_MAX_PAGES} pages at once (HUB_SCHEDULE_MAX_PAGES). The next tick goes on.",
            )
            continue
        base = _PAGE_RE.sub("", delivery.event.message_id)
        _tick(schedule, now=now, message_id=f"{base}:p{page + 1}", next_page=True)
        transaction.on_commit(lambda: pumps_enqueue([subscription.pk], coalesce=True))


def _schedule_id(event: Event) -> int | None:
    text = event.origin[len(TICK_ORIGIN) :]
    return int(text) if text.isdigit() else None


def _event_page(event: Event) -> int:
    match = _PAGE_RE.search(event.message_id)
    return int(match.group(1)) if match else 1


def _parameter(parameters: Any, name: str) -> Any:
    """A parameter's value from the list form ([{"name", "value"}]) or the object form."""
    if isinstance(parameters, Mapping):
        return parameters.get(name)
    if isinstance(parameters, list):
        for item in parameters:
            if isinstance(item, Mapping) and item.get("name") == name:
                return item.get("value")
    return None


def _page_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _more_pages(result: Any, *, sent_page: int | None) -> bool:
    """HTTP 206 says there is more; so does a returned `page` past the one sent (a last page sets
    it back, to 1 say, as ShipStation-style endpoints do)."""
    if result.status_code == 206:
        return True
    reply = result.reply if isinstance(result.reply, Mapping) else {}
    returned = _page_number(_parameter(reply.get("parameters"), "page"))
    return returned is not None and returned > (sent_page or 1)


# --- What the dashboard shows ------------------------------------------------------------------
def schedules_overview(*, limit: int = 20) -> list[Schedule]:
    """The schedules, those with an error first, then by next run."""
    rows = list(Schedule.objects.select_related("subscription").order_by("next_run_at", "id")[: limit * 5])
    rows.sort(key=lambda s: (not s.last_error, s.is_paused, s.next_run_at or datetime.max.replace(tzinfo=UTC)))
    return rows[:limit]
