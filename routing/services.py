"""Routing services: who gets an event, and accepting an event together with its deliveries."""

from __future__ import annotations

import logging

from django.db import transaction

from events.models import Event, EventStatus, Store
from events.services import Envelope, IngestResult, event_ingest
from routing import matching
from routing.models import Delivery, Subscription

logger = logging.getLogger(__name__)


def subscriptions_for_event(*, event: Event) -> list[Subscription]:
    subs = Subscription.objects.filter(is_enabled=True).order_by("id")
    wanted = []
    for sub in subs:
        if sub.store_id is not None and sub.store_id == event.store_id and not sub.receive_own_events:
            continue
        if not matching.message_types_match(sub.message_types, event.message):
            continue
        wanted.append(sub)
    return wanted


def deliveries_create_for_event(*, event: Event) -> list[Delivery]:
    """One pending delivery per matching subscription; the event becomes unrouted when none match."""
    deliveries = [
        Delivery(event=event, subscription=sub, resource_key=event.resource_key, next_attempt_at=event.created_at)
        for sub in subscriptions_for_event(event=event)
    ]
    if deliveries:
        Delivery.objects.bulk_create(deliveries)
    else:
        Event.objects.filter(pk=event.pk).update(status=EventStatus.UNROUTED)
        event.status = EventStatus.UNROUTED
    return deliveries


def deliveries_enqueue(delivery_ids: list[int]) -> None:
    """Tell the broker 'look at delivery N'. A broker outage is not the store's problem: the
    deliveries are durable and the sweeper enqueues them once the broker is back."""
    from routing.tasks import delivery_attempt_task

    for delivery_id in delivery_ids:
        try:
            delivery_attempt_task.delay(delivery_id)
        except Exception:  # noqa: BLE001 - any broker failure; the database still holds the delivery
            logger.warning("broker unavailable; delivery left for the sweeper", extra={"delivery_id": delivery_id})
            return


def event_accept(
    *, store: Store | None, envelope: Envelope, parent: Event | None = None, origin: str = ""
) -> IngestResult:
    """Store an event and its deliveries in one transaction, and enqueue them once committed."""
    with transaction.atomic():
        result = event_ingest(store=store, envelope=envelope, parent=parent, origin=origin)
        if not result.created:
            return result
        deliveries = deliveries_create_for_event(event=result.event)
        ids = [d.pk for d in deliveries]
        if ids:
            transaction.on_commit(lambda: deliveries_enqueue(ids))
    return result
