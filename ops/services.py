"""Operations that write: pushing an envelope as a store would, and purging old delivered events
(on request, or periodically under the retention settings)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from events.models import Event, EventDescendants, EventStatus, Store
from events.services import IngestResult
from events.validation import envelope_validate
from ops import partitions
from routing.models import (
    DELIVERY_FINAL_STATES,
    Attempt,
    Delivery,
    DeliveryState,
    Notification,
    ReturnedObject,
    Schedule,
)
from routing.outbox import event_accept
from routing.status import events_status_refresh

logger = logging.getLogger(__name__)

# A delivery in one of these states still needs the event (or someone's attention).
DELIVERY_UNFINISHED_STATES = (
    DeliveryState.PENDING,
    DeliveryState.DELIVERING,
    DeliveryState.RETRYING,
    DeliveryState.FAILED,
)


def envelope_push(*, store: Store, data: Any) -> IngestResult:
    """Exactly what POST /events does with one envelope: validate, store, route, enqueue."""
    return event_accept(store=store, envelope=envelope_validate(data))


def events_purgeable(*, older_than: datetime, include_unrouted: bool = False) -> QuerySet[Event]:
    """Events older than `older_than` that every endpoint has received (none of their deliveries
    is pending, retrying or failed). Events no subscription wanted only with `include_unrouted`."""
    unfinished = Delivery.objects.filter(event=OuterRef("pk"), state__in=DELIVERY_UNFINISHED_STATES)
    any_delivery = Delivery.objects.filter(event=OuterRef("pk"))
    routed_and_done = Exists(any_delivery) & ~Exists(unfinished)
    done = (routed_and_done | ~Exists(any_delivery)) if include_unrouted else routed_and_done
    return Event.objects.filter(Q(created_at__lt=older_than) & done)


@dataclass(frozen=True)
class PurgeBatch:
    events: int
    rows: int


def events_purge(
    *,
    older_than: datetime,
    batch_size: int = 1000,
    dry_run: bool = False,
    include_unrouted: bool = False,
    within: Q | None = None,
) -> Iterator[PurgeBatch]:
    """Delete purgeable events (with their deliveries, attempts and notifications) in batches of
    `batch_size`, each in its own short transaction, so the tables are never locked for long.

    Deleting an event deletes the events its endpoints' replies created (they cascade), so an
    event whose descendants are not purgeable themselves is kept. Yields one PurgeBatch per batch;
    with `dry_run`, counts what would go and deletes nothing. `within` narrows the events looked at.
    """
    purgeable = events_purgeable(older_than=older_than, include_unrouted=include_unrouted)
    if within is not None:
        purgeable = purgeable.filter(within)
    last_id = 0
    while True:
        ids = list(purgeable.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:batch_size])
        if not ids:
            return
        last_id = ids[-1]
        roots, family = _purgeable_families(ids, purgeable)
        if not roots:
            continue
        if dry_run:
            yield PurgeBatch(events=len(roots), rows=0)
            continue
        with transaction.atomic():
            batch = _family_delete(family)
        yield batch


def _purgeable_families(ids: list[int], purgeable: QuerySet[Event]) -> tuple[list[int], list[int]]:
    """Of `ids`, those whose every descendant (the events their replies made, at any depth) is
    purgeable too; and those with all their descendants, which go with them."""
    root_of = {event_id: event_id for event_id in ids}
    blocked: set[int] = set()
    found: dict[int, int] = {}
    frontier = dict(root_of)
    while frontier:
        children = list(Event.objects.filter(parent_id__in=list(frontier)).values_list("id", "parent_id"))
        if not children:
            break
        child_ids = [child for child, _ in children]
        fine = set(purgeable.filter(id__in=child_ids).values_list("id", flat=True))
        next_frontier: dict[int, int] = {}
        for child, parent in children:
            root = frontier[parent]
            if child in fine:
                next_frontier[child] = root
            else:
                blocked.add(root)
        frontier = {child: root for child, root in next_frontier.items() if root not in blocked}
        found.update(frontier)
    roots = [event_id for event_id in ids if event_id not in blocked]
    descendants = [child for child, root in found.items() if root not in blocked and child not in root_of]
    return roots, roots + descendants


def _family_delete(ids: list[int]) -> PurgeBatch:
    """Delete the events `ids` (descendants included: the caller found them) and every row that
    refers to them, one statement per table, dependents first; inside the caller's transaction.

    Django's delete() reads each event whole (its payload too) and each delivery's id into memory
    to cascade, then sends them back as lists; here the database finds the rows itself. Every
    relation to an event or a delivery is named below (tests.ops.test_commands checks the list)."""
    deliveries = Delivery.objects.filter(event_id__in=ids)
    delivery_ids = Subquery(deliveries.values("id"))
    rows = Attempt.objects.filter(delivery_id__in=delivery_ids).delete()[0]
    rows += Notification.objects.filter(Q(event_id__in=ids) | Q(delivery_id__in=delivery_ids)).delete()[0]
    rows += EventDescendants.objects.filter(root_id__in=ids).delete()[0]
    Schedule.objects.filter(last_event_id__in=ids).update(last_event=None)
    # Replays are of the same event, so among these. Their dependents are gone: a plain DELETE
    # each (what delete() itself sends once it has nothing to cascade to).
    rows += deliveries._raw_delete(deliveries.db)
    events = Event.objects.filter(id__in=ids)
    deleted = events._raw_delete(events.db)
    return PurgeBatch(events=deleted, rows=rows + deleted)


def events_retention_purge() -> int:
    """The periodic retention job: purge events older than HUB_RETENTION_DAYS whose every delivery
    was delivered (or cancelled); failed ones stay until someone handles them. Returns how many
    events were deleted row by row (on partitioned PostgreSQL, besides the partitions dropped);
    0 days keeps everything."""
    if settings.HUB_RETENTION_DAYS <= 0:
        return 0
    older_than = timezone.now() - timedelta(days=settings.HUB_RETENTION_DAYS)
    within = None
    if partitions.partitioned():
        # PostgreSQL: whole ranges of ids dropped; then deleted row by row only what lives in the
        # default partitions (the events kept by earlier drops), never inside a range partition.
        partitions.partitions_retention_drop(
            older_than=older_than, include_unrouted=settings.HUB_RETENTION_INCLUDE_UNROUTED
        )
        covered = partitions.ranges_partitioned()
        within = ~Q(id__gte=covered[0], id__lt=covered[1]) if covered else None
    purged = 0
    for batch in events_purge(
        older_than=older_than,
        batch_size=settings.HUB_RETENTION_BATCH_SIZE,
        include_unrouted=settings.HUB_RETENTION_INCLUDE_UNROUTED,
        within=within,
    ):
        purged += batch.events
    forgotten = returned_objects_forget(older_than=older_than, batch_size=settings.HUB_RETENTION_BATCH_SIZE)
    if purged or forgotten:
        logger.info(
            "retention purge",
            extra={"events": purged, "returned_objects": forgotten, "older_than": older_than.isoformat()},
        )
    return purged


def returned_objects_forget(*, older_than: datetime, batch_size: int = 1000) -> int:
    """Forget the objects endpoints returned before `older_than`, in batches: the table grows with
    every new object, and an object returned again unchanged after the retention window makes an
    event again, as after any purge."""
    forgotten = 0
    while True:
        ids = list(
            ReturnedObject.objects.filter(created_at__lt=older_than)
            .order_by("id")
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return forgotten
        with transaction.atomic():
            forgotten += ReturnedObject.objects.filter(id__in=ids).delete()[0]


def events_status_recheck(*, batch_size: int = 1000) -> int:
    """Refresh the status of every event shown queued or delivering whose deliveries have all
    ended (none pending, retrying or on the wire): an event a status refresh read stale
    deliveries for (two endpoints' outcomes recorded at once, before session 23's fix) kept that
    status for good. One transaction per batch of ids; returns how many events changed."""
    deliveries = Delivery.objects.filter(event=OuterRef("pk"))
    stuck = Event.objects.filter(status__in=[EventStatus.QUEUED, EventStatus.DELIVERING]).filter(
        Exists(deliveries), ~Exists(deliveries.exclude(state__in=DELIVERY_FINAL_STATES))
    )
    changed, after = 0, 0
    while True:
        ids = list(stuck.filter(pk__gt=after).order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return changed
        with transaction.atomic():
            statuses = events_status_refresh(event_ids=ids)
        changed += sum(1 for status in statuses.values() if status not in (EventStatus.QUEUED, EventStatus.DELIVERING))
        after = ids[-1]
