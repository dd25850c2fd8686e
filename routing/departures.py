"""A pushed event that departs from its message's schema (events.conformance) is accepted and
delivered as sent, with one warning on the event saying where: the Notification routing writes
with the event, in the same statement as its deliveries."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings

from events.conformance import departures_text, payload_departures
from events.models import Event
from routing.models import Notification, NotificationLevel


def departures_note(event: Event) -> Notification | None:
    """The unsaved warning about how the built event's payload departs from its schema, or None
    when it conforms, has no schema, is too large to check or the check is off. Only what a store
    pushed is checked: an event an endpoint returned is that endpoint's to describe."""
    limit = settings.HUB_SCHEMA_WARNINGS_MAX
    if event.store_id is None:
        return None
    # The payload's JSON as validation wrote it (events.services.Envelope), when there is one.
    written = event.__dict__.get("payload_json")
    if limit <= 0 or (written is not None and len(written) > settings.HUB_SCHEMA_CHECK_MAX_BYTES):
        return None
    departures = payload_departures(event.message, event.payload, limit=limit)
    if departures is None:
        return None
    subject, description = departures_text(departures)
    return Notification(
        event=event,
        level=NotificationLevel.WARN,
        subject=subject[:200],
        description=description,
        resource_key=event.resource_key,
        created_at=event.created_at,
    )


def departures_notes(events: Iterable[Event]) -> list[Notification]:
    return [note for note in map(departures_note, events) if note is not None]
