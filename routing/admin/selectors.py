"""What the admin reads: the dashboard's counts and activity, an event with everything that happened
to it, and the timeline of one order. Each is a fixed number of queries however large the hub is."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Aggregate, Count, FloatField, Prefetch, Q
from django.db.models.functions import ExtractMinute, Floor, TruncHour, TruncMinute
from django.utils import timezone

from events.models import Event, EventStatus
from infra.counts import Tallies, tallies_by
from routing import sql
from routing.backlog import OldestWaiting, delivery_oldest_open, delivery_state_counts
from routing.models import Attempt, Delivery, DeliveryState, Notification, NotificationLevel, Subscription
from routing.operations import TEST_MESSAGE
from routing.selectors import deliveries_summaries

# A page lists at most this many of one kind of row; the rest is a click away in a filtered list.
DETAIL_ROWS_MAX = 200
TIMELINE_EVENTS_MAX = 200


@dataclass(frozen=True)
class DashboardCounts:
    deliveries: Tallies
    failed_last_hour: int
    failed_last_day: int
    events: Tallies
    oldest_waiting: OldestWaiting | None
    subscriptions_disabled: int


def dashboard_counts(*, now: datetime | None = None) -> DashboardCounts:
    """Deliveries per state (the same count `hubstatus` and /metrics report), deliveries failed in
    the last hour and day, events per status, the oldest delivery still waiting, the subscriptions
    disabled. Counts past HUB_EXACT_COUNT_LIMIT are PostgreSQL's estimates (infra.counts)."""
    now = now or timezone.now()
    # A failed delivery's last change is when it failed: updated_at dates the failure.
    # Failed test sends are the admin's probes, not lost deliveries of the stores' events.
    recent = (
        Delivery.objects.filter(state=DeliveryState.FAILED, updated_at__gte=now - timedelta(days=1))
        .exclude(event__message=TEST_MESSAGE)
        .aggregate(hour=Count("id", filter=Q(updated_at__gte=now - timedelta(hours=1))), day=Count("id"))
    )
    return DashboardCounts(
        deliveries=delivery_state_counts(),
        failed_last_hour=recent["hour"],
        failed_last_day=recent["day"],
        events=tallies_by(Event.objects.all(), "status", EventStatus.values),
        oldest_waiting=delivery_oldest_open(now=now),
        subscriptions_disabled=Subscription.objects.filter(is_enabled=False).count(),
    )


HOUR_BUCKETS = 60  # of one minute
DAY_BUCKET_MINUTES = 15
DAY_BUCKETS = 24 * 60 // DAY_BUCKET_MINUTES
# The slowest endpoints listed by latency; the rest are on their subscription's deliveries.
LATENCY_ENDPOINTS_MAX = 20
# Where percentiles are computed in Python (SQLite), over at most this many of the hour's latest attempts.
LATENCY_SAMPLE_MAX = 20_000


@dataclass(frozen=True)
class Bucket:
    """What happened from `start` for the bucket's length: events pushed, attempts made and failed."""

    start: datetime
    pushed: int = 0
    attempts: int = 0
    failed: int = 0


@dataclass(frozen=True)
class EndpointLatency:
    subscription_id: int
    name: str
    attempts: int
    failed: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class DashboardActivity:
    last_hour: list[Bucket]  # one a minute, oldest first, the current minute last
    last_day: list[Bucket]  # one per DAY_BUCKET_MINUTES
    latency: list[EndpointLatency]  # over the last hour, slowest p99 first
    latency_sampled: bool = False  # computed over the hour's latest LATENCY_SAMPLE_MAX attempts only


class PercentileCont(Aggregate):
    """PostgreSQL's percentile_cont: the value at `fraction` of the ordered group, interpolated."""

    function = "PERCENTILE_CONT"
    name = "PercentileCont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float, **extra: Any) -> None:
        # float() keeps anything but a number out of the SQL text.
        super().__init__(expression, fraction=float(fraction), **extra)


def percentile_cont(values: Sequence[float], fraction: float) -> float:
    """What PostgreSQL's percentile_cont answers for `values`: linear interpolation at
    fraction * (n - 1) of the sorted values."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return float(ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower))


def _minute_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def _bucket_counts(
    queryset: Any, column: str, *, start: datetime, end: datetime, quarters: bool, failed: Q | None = None
) -> dict[datetime, tuple[int, int]]:
    """Rows from `start` to `end` counted per minute, or per quarter hour: {bucket start: (rows,
    rows matching `failed`)}. One aggregate query on the index of `column`, grouped in SQL by the
    bucket itself so that one row per bucket comes back, not one per minute to convert and add up."""
    queryset = queryset.filter(**{f"{column}__gte": start, f"{column}__lt": end}).order_by()
    if quarters:
        queryset = queryset.annotate(
            bucket_hour=TruncHour(column, tzinfo=UTC),
            bucket_quarter=Floor(ExtractMinute(column, tzinfo=UTC) / DAY_BUCKET_MINUTES),
        ).values("bucket_hour", "bucket_quarter")
    else:
        queryset = queryset.annotate(bucket_minute=TruncMinute(column, tzinfo=UTC)).values("bucket_minute")
    counts = {"n": Count(column)}
    if failed is not None:
        counts["failed"] = Count(column, filter=failed)
    result = {}
    for row in queryset.annotate(**counts):
        if quarters:
            when = row["bucket_hour"] + timedelta(minutes=int(row["bucket_quarter"]) * DAY_BUCKET_MINUTES)
        else:
            when = row["bucket_minute"]
        result[when.astimezone(UTC)] = (row["n"], row.get("failed", 0))
    return result


def dashboard_activity(*, now: datetime | None = None) -> DashboardActivity:
    """Events pushed and attempts made and failed per minute over the last hour and per quarter hour
    over the last day, and each endpoint's attempt latency (p50, p99) over the last hour: five
    queries, each a range scan on the index of its time column. Nothing after the current minute
    (a clock ahead) is counted."""
    now = now or timezone.now()
    current = _minute_floor(now)
    end = current + timedelta(minutes=1)
    hour_start = end - timedelta(minutes=HOUR_BUCKETS)
    quarter = timedelta(minutes=DAY_BUCKET_MINUTES)
    day_start = current - timedelta(minutes=current.minute % DAY_BUCKET_MINUTES) + quarter - DAY_BUCKETS * quarter

    def series(start: datetime, step: timedelta, size: int, quarters: bool) -> list[Bucket]:
        pushed = _bucket_counts(Event.objects, "created_at", start=start, end=end, quarters=quarters)
        attempts = _bucket_counts(
            Attempt.objects, "started_at", start=start, end=end, quarters=quarters, failed=Q(succeeded=False)
        )
        buckets = []
        for i in range(size):
            when = start + i * step
            made, failed = attempts.get(when, (0, 0))
            buckets.append(Bucket(when, pushed.get(when, (0, 0))[0], made, failed))
        return buckets

    latency, sampled = endpoint_latency(start=hour_start, end=end)
    return DashboardActivity(
        last_hour=series(hour_start, timedelta(minutes=1), HOUR_BUCKETS, quarters=False),
        last_day=series(day_start, quarter, DAY_BUCKETS, quarters=True),
        latency=latency,
        latency_sampled=sampled,
    )


def endpoint_latency(*, start: datetime, end: datetime) -> tuple[list[EndpointLatency], bool]:
    """Each endpoint's attempts from `start` to `end` with their p50 and p99 latency, slowest p99
    first, in one query; and whether the figures come from a sample. PostgreSQL computes the
    percentiles itself; elsewhere they are computed here over the latest LATENCY_SAMPLE_MAX attempts."""
    if connection.vendor == "postgresql":
        return endpoint_latency_sql(start=start, end=end), False
    return endpoint_latency_sample(start=start, end=end)


def endpoint_latency_sql(*, start: datetime, end: datetime) -> list[EndpointLatency]:
    rows = (
        Attempt.objects.filter(started_at__gte=start, started_at__lt=end)
        .order_by()
        .values("delivery__subscription_id", "delivery__subscription__name")
        .annotate(
            n=Count("started_at"),
            failed=Count("started_at", filter=Q(succeeded=False)),
            p50=PercentileCont("latency_ms", 0.5),
            p99=PercentileCont("latency_ms", 0.99),
        )
        .order_by("-p99", "delivery__subscription__name")[:LATENCY_ENDPOINTS_MAX]
    )
    return [
        EndpointLatency(
            subscription_id=row["delivery__subscription_id"],
            name=row["delivery__subscription__name"],
            attempts=row["n"],
            failed=row["failed"],
            p50_ms=float(row["p50"]),
            p99_ms=float(row["p99"]),
        )
        for row in rows
    ]


def endpoint_latency_sample(*, start: datetime, end: datetime) -> tuple[list[EndpointLatency], bool]:
    rows = list(
        Attempt.objects.filter(started_at__gte=start, started_at__lt=end)
        .order_by("-started_at")
        .values_list("delivery__subscription_id", "delivery__subscription__name", "latency_ms", "succeeded")[
            : LATENCY_SAMPLE_MAX + 1
        ]
    )
    sampled = len(rows) > LATENCY_SAMPLE_MAX
    groups: dict[tuple[int, str], list[tuple[int, bool]]] = {}
    for subscription_id, name, latency_ms, succeeded in rows[:LATENCY_SAMPLE_MAX]:
        groups.setdefault((subscription_id, name), []).append((latency_ms, succeeded))
    result = [
        EndpointLatency(
            subscription_id=subscription_id,
            name=name,
            attempts=len(group),
            failed=sum(1 for _, succeeded in group if not succeeded),
            p50_ms=percentile_cont([ms for ms, _ in group], 0.5),
            p99_ms=percentile_cont([ms for ms, _ in group], 0.99),
        )
        for (subscription_id, name), group in groups.items()
    ]
    result.sort(key=lambda row: (-row.p99_ms, row.name))
    return result[:LATENCY_ENDPOINTS_MAX], sampled


def event_messages() -> list[str]:
    """The distinct message names stored, for the events list's filter. A loose index scan (one
    index probe per name) instead of SELECT DISTINCT, which reads every row of a large hub."""
    with connection.cursor() as cursor:
        cursor.execute(sql.message_names())
        return [row[0] for row in cursor.fetchall()]


def deliveries_with_attempts(queryset: Any) -> list[Delivery]:
    """Deliveries with their subscription and attempts loaded: two queries for any number."""
    return list(
        queryset.select_related("subscription")
        .prefetch_related(Prefetch("attempts", queryset=Attempt.objects.order_by("number")))
        .order_by("id")[:DETAIL_ROWS_MAX]
    )


@dataclass(frozen=True)
class NoteRow:
    """A row of the event page's notifications: a notification, or an attempt's summary."""

    created_at: datetime
    level: str
    source: str
    subject: str
    description: str
    summary: bool = False

    @property
    def level_label(self) -> str:
        return NotificationLevel(self.level).label


@dataclass(frozen=True)
class EventDetail:
    deliveries: list[Delivery]
    notifications: list[Notification]
    children: list[Event]
    # The notifications and the attempts' summaries, in time order.
    notes: list[NoteRow] = field(default_factory=list)


def event_detail(*, event: Event) -> EventDetail:
    deliveries = deliveries_with_attempts(Delivery.objects.filter(event=event))
    notifications = list(
        Notification.objects.filter(event=event).select_related("subscription").order_by("id")[:DETAIL_ROWS_MAX]
    )
    rows = [
        NoteRow(n.created_at, n.level, n.subscription.name if n.subscription else "hub", n.subject, n.description)
        for n in notifications
    ]
    summaries = [
        NoteRow(s.created_at, s.level, s.subscription, s.subject, s.description, summary=True)
        for s in deliveries_summaries(deliveries)
    ]
    return EventDetail(
        deliveries=deliveries,
        notifications=notifications,
        children=list(Event.objects.filter(parent=event).order_by("id")[:DETAIL_ROWS_MAX]),
        notes=list(heapq.merge(rows, summaries, key=lambda row: row.created_at)),
    )


def resource_key_from_query(text: str, *, resource: str = "order") -> str:
    """What an admin types, as a resource key: 'R123' is the order R123, 'order:R123' stays as is."""
    text = text.strip()
    if ":" in text:
        return text
    return f"{resource}:{text}"


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # event, attempt, delivered, notification
    event: Event
    delivery: Delivery | None = None
    attempt: Attempt | None = None
    notification: Notification | None = None


@dataclass(frozen=True)
class Timeline:
    resource_key: str
    entries: list[TimelineEntry] = field(default_factory=list)
    events_shown: int = 0
    truncated: bool = False


# When two things share a timestamp, an event comes before what was done with it.
_KIND_ORDER = {"event": 0, "attempt": 1, "delivered": 2, "notification": 3}


def resource_timeline(*, resource_key: str) -> Timeline:
    """Every event of one resource (an order), the events endpoints returned for them and the
    events whose replies made them, their deliveries, attempts and notifications, oldest first.
    At most six queries."""
    roots = list(
        Event.objects.filter(resource_key=resource_key)
        .select_related("store")
        .order_by("id")[: TIMELINE_EVENTS_MAX + 1]
    )
    truncated = len(roots) > TIMELINE_EVENTS_MAX
    roots = roots[:TIMELINE_EVENTS_MAX]
    root_ids = {e.pk for e in roots}
    children = list(
        Event.objects.filter(parent_id__in=root_ids)
        .exclude(pk__in=root_ids)
        .select_related("store")
        .order_by("id")[:TIMELINE_EVENTS_MAX]
    )
    # The event whose reply made one of them when it is about no resource of its own (a schedule's
    # tick that returned the order): what asked for it shows here too, not its other children. A
    # parent with a key of its own (another order) has its own timeline.
    parent_ids = {e.parent_id for e in roots if e.parent_id is not None} - root_ids
    parents = (
        list(Event.objects.filter(pk__in=parent_ids, resource_key__isnull=True).select_related("store"))
        if parent_ids
        else []
    )
    events = {e.pk: e for e in [*parents, *roots, *children]}
    deliveries = deliveries_with_attempts(Delivery.objects.filter(event_id__in=events))
    notifications = list(
        Notification.objects.filter(event_id__in=events).select_related("subscription").order_by("id")[:DETAIL_ROWS_MAX]
    )
    entries = [TimelineEntry(at=e.created_at, kind="event", event=e) for e in events.values()]
    for delivery in deliveries:
        event = events[delivery.event_id]
        for attempt in delivery.attempts.all():
            entries.append(
                TimelineEntry(at=attempt.started_at, kind="attempt", event=event, delivery=delivery, attempt=attempt)
            )
        if delivery.delivered_at:
            entries.append(TimelineEntry(at=delivery.delivered_at, kind="delivered", event=event, delivery=delivery))
    for note in notifications:
        entries.append(
            TimelineEntry(at=note.created_at, kind="notification", event=events[note.event_id], notification=note)
        )
    entries.sort(key=lambda entry: (entry.at, _KIND_ORDER[entry.kind], entry.event.pk))
    return Timeline(resource_key=resource_key, entries=entries, events_shown=len(roots), truncated=truncated)


def event_search_q(term: str) -> Q | None:
    """What the admin's search box finds, as exact (indexed) matches on events: the public id,
    the message_id, or an order number ('R123', or a full resource key such as 'shipment:H9')."""
    import uuid

    term = term.strip()
    if not term:
        return None
    q = Q(message_id=term) | Q(resource_key=resource_key_from_query(term))
    try:
        q |= Q(uid=uuid.UUID(term))
    except ValueError:
        pass
    return q
