"""What the admin reads: the dashboard's counts, an event with everything that happened to it,
and the timeline of one order. Each is a fixed number of queries however large the hub is."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Prefetch, Q
from django.utils import timezone

from events.models import Event, EventStatus
from ops.selectors import OldestWaiting, delivery_oldest_open, delivery_state_counts
from routing.models import Attempt, Delivery, DeliveryState, Notification, Subscription

# A page lists at most this many of one kind of row; the rest is a click away in a filtered list.
DETAIL_ROWS_MAX = 200
TIMELINE_EVENTS_MAX = 200


@dataclass(frozen=True)
class DashboardCounts:
    deliveries: dict[str, int]
    failed_last_hour: int
    failed_last_day: int
    events: dict[str, int]
    oldest_waiting: OldestWaiting | None
    subscriptions_disabled: int


def dashboard_counts(*, now: datetime | None = None) -> DashboardCounts:
    """Deliveries per state (the same count `hubstatus` and /metrics report), deliveries failed in
    the last hour and day, events per status, the oldest delivery still waiting, the subscriptions
    disabled: five queries, each on an index."""
    now = now or timezone.now()
    # A failed delivery's last change is when it failed: updated_at dates the failure.
    recent = Delivery.objects.filter(state=DeliveryState.FAILED, updated_at__gte=now - timedelta(days=1)).aggregate(
        hour=Count("id", filter=Q(updated_at__gte=now - timedelta(hours=1))), day=Count("id")
    )
    events = {status: 0 for status in EventStatus.values}
    for row in Event.objects.order_by().values("status").annotate(n=Count("id")):
        events[row["status"]] = row["n"]
    return DashboardCounts(
        deliveries=delivery_state_counts(),
        failed_last_hour=recent["hour"],
        failed_last_day=recent["day"],
        events=events,
        oldest_waiting=delivery_oldest_open(now=now),
        subscriptions_disabled=Subscription.objects.filter(is_enabled=False).count(),
    )


def event_messages() -> list[str]:
    """The distinct message names stored, for the events list's filter. A loose index scan (one
    index probe per name) instead of SELECT DISTINCT, which reads every row of a large hub."""
    from django.db import connection

    table = connection.ops.quote_name(Event._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH RECURSIVE names(message) AS (
                SELECT MIN(message) FROM {table}
                UNION ALL
                SELECT (SELECT MIN(message) FROM {table} WHERE message > names.message)
                FROM names WHERE names.message IS NOT NULL
            )
            SELECT message FROM names WHERE message IS NOT NULL
            """
        )
        return [row[0] for row in cursor.fetchall()]


def deliveries_with_attempts(queryset: Any) -> list[Delivery]:
    """Deliveries with their subscription and attempts loaded: two queries for any number."""
    return list(
        queryset.select_related("subscription")
        .prefetch_related(Prefetch("attempts", queryset=Attempt.objects.order_by("number")))
        .order_by("id")[:DETAIL_ROWS_MAX]
    )


@dataclass(frozen=True)
class EventDetail:
    deliveries: list[Delivery]
    notifications: list[Notification]
    children: list[Event]


def event_detail(*, event: Event) -> EventDetail:
    return EventDetail(
        deliveries=deliveries_with_attempts(Delivery.objects.filter(event=event)),
        notifications=list(
            Notification.objects.filter(event=event).select_related("subscription").order_by("id")[:DETAIL_ROWS_MAX]
        ),
        children=list(Event.objects.filter(parent=event).order_by("id")[:DETAIL_ROWS_MAX]),
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
    """Every event of one resource (an order), the events endpoints returned for them, their
    deliveries, attempts and notifications, oldest first. Five queries."""
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
    events = {e.pk: e for e in [*roots, *children]}
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
