"""Concurrent pushes of one message_id: the database constraint decides, every caller gets the same event.
Real threads, each with its own database connection.
"""

import threading
import time

import pytest
from django.db import connection, transaction

from events.models import Event
from tests.conftest import post_in_thread, posts_at_once
from tests.factories import StoreFactory

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8
DEADLINE_SECONDS = 60


def test_concurrent_duplicate_pushes_store_one_event_and_agree_on_its_id():
    store = StoreFactory()
    envelope = {"message": "order:new", "message_id": "race-1", "payload": {"order": {"number": "R1"}}}
    answers, errors = posts_at_once(store.token, "/events", envelope, THREADS, DEADLINE_SECONDS)

    assert not errors, errors
    assert len(answers) == THREADS
    assert Event.objects.filter(store=store, message_id="race-1").count() == 1
    event = Event.objects.get(store=store, message_id="race-1")
    assert {body["event_id"] for _, body in answers} == {str(event.uid)}
    assert sorted(status for status, _ in answers) == [200] * (THREADS - 1) + [202]


def _postgres_backend_waits_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def test_push_blocked_behind_an_uncommitted_duplicate_returns_the_winner():
    """Forces the narrow race: the duplicate is not yet visible when the second push checks for it,
    so only the unique constraint can catch it (PostgreSQL: the insert waits on the index; SQLite: the
    write lock serialises the two, and the check then sees the winner)."""
    store = StoreFactory()
    inserted, release = threading.Event(), threading.Event()
    winner: list[Event] = []
    answers: list = []
    errors: list = []

    def hold_uncommitted_insert() -> None:
        try:
            with transaction.atomic():
                winner.append(Event.objects.create(store=store, message="order:new", message_id="race-2", payload={}))
                inserted.set()
                release.wait(DEADLINE_SECONDS)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            inserted.set()
        finally:
            connection.close()

    holder = threading.Thread(target=hold_uncommitted_insert)
    holder.start()
    assert inserted.wait(DEADLINE_SECONDS)
    pusher = threading.Thread(
        target=post_in_thread,
        args=(
            store.token,
            "/events",
            {"message": "order:new", "message_id": "race-2", "payload": {}},
            threading.Barrier(1),
            answers,
            errors,
        ),
    )
    pusher.start()
    if connection.vendor == "postgresql":
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not _postgres_backend_waits_on_a_lock():
            assert time.monotonic() < deadline, "the second push never reached the unique index"
            assert pusher.is_alive(), answers or errors
            time.sleep(0.02)
    release.set()
    holder.join(DEADLINE_SECONDS)
    pusher.join(DEADLINE_SECONDS)

    assert not errors, errors
    assert answers == [(200, answers[0][1])]
    assert answers[0][1]["event_id"] == str(winner[0].uid)
    assert Event.objects.filter(store=store, message_id="race-2").count() == 1
