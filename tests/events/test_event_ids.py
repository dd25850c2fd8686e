"""Event ids are UUID version 7 (events/ids.py): time-ordered, random below the millisecond."""

from __future__ import annotations

import time
import uuid

import pytest

from events.ids import uuid7
from events.models import Event


def test_uuid7_has_version_7_and_the_rfc_variant():
    for _ in range(1000):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_starts_with_the_unix_millisecond_it_was_made():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7_sorts_by_the_millisecond_and_is_random_below_it():
    first = uuid7()
    time.sleep(0.002)
    later = [uuid7() for _ in range(2000)]
    assert all(first < value for value in later)
    assert len(set(later)) == len(later)
    # The 74 bits below the timestamp are random: they differ within one millisecond.
    assert len({value.int & ((1 << 74) - 1) for value in later}) == len(later)


@pytest.mark.django_db
def test_pushed_events_get_version_7_ids(api):
    response = api.post("/events", {"message": "order:new", "payload": {}}, format="json")
    event = Event.objects.get()
    assert response.json()["event_id"] == str(event.uid)
    assert event.uid.version == 7
    # A message_id the hub makes is the event id's hex, time-ordered too.
    assert event.message_id == event.uid.hex
