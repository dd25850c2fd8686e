"""Reading events for the API and the admin."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db.models import QuerySet

from events.models import Event, Store


def event_get(*, store: Store, event_id: str) -> Event | None:
    """A store's own event by its public id; another store's event is simply not found."""
    try:
        uid = uuid.UUID(str(event_id))
    except ValueError:
        return None
    return Event.objects.filter(store=store, uid=uid).first()


def event_list(
    *,
    store: Store,
    message: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    resource_key: str | None = None,
) -> QuerySet[Event]:
    """A store's events, newest first; `message` is a canonical name or 'resource:*'."""
    qs = Event.objects.filter(store=store)
    if message and message.endswith(":*"):
        qs = qs.filter(message__startswith=message[:-1])
    elif message:
        qs = qs.filter(message=message)
    if status:
        qs = qs.filter(status=status)
    if since:
        qs = qs.filter(created_at__gte=since)
    if resource_key:
        qs = qs.filter(resource_key=resource_key)
    return qs.order_by("-id")
