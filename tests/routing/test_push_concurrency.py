"""Concurrent pushes in one web process are written independently (routing.outbox.event_accept):
a push held up in its INSERT holds back no other push, and each is answered once its own statement
is committed. Real threads, each with its own database connection, in the test's process, as
gunicorn's threads share a worker's.

The held push waits on PostgreSQL's unique index of the keys behind an uncommitted event of the
same message_id (SQLite serialises every writer, so it cannot show this)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from events.models import Event
from routing.models import Delivery
from tests.conftest import post_in_thread
from tests.factories import StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30.0


def _envelope(message_id: str) -> dict:
    return {"message": "order:new", "message_id": message_id, "payload": {"order": {"number": message_id}}}


def _push(store, message_id: str, answers: list, errors: list) -> threading.Thread:
    thread = threading.Thread(
        target=post_in_thread,
        args=(store.token, "/events", _envelope(message_id), threading.Barrier(1), answers, errors, WAIT),
    )
    thread.start()
    return thread


def _a_push_waits_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.fixture
def key_held():
    """An uncommitted event of the store's `message_id` on a connection of its own, rolled back when
    the returned release is called (or at the end)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises every writer")
    inserted, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    holders: list[threading.Thread] = []

    def hold(store, message_id: str) -> threading.Event:
        def run() -> None:
            try:
                with transaction.atomic():
                    Event.objects.create(store=store, message="order:new", message_id=message_id, payload={})
                    inserted.set()
                    release.wait(WAIT)
                    transaction.set_rollback(True)
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                errors.append(exc)
                inserted.set()
            finally:
                connection.close()

        holder = threading.Thread(target=run)
        holder.start()
        holders.append(holder)
        assert inserted.wait(WAIT)
        assert not errors, errors
        return release

    yield hold
    release.set()
    for holder in holders:
        holder.join(WAIT)
    assert not errors, errors


def test_a_push_held_in_its_insert_holds_back_no_other_push(key_held):
    store = StoreFactory()
    subscription = SubscriptionFactory(message_types=["order:new"])
    release = key_held(store, "held")
    held_answers: list = []
    held_errors: list = []
    held = _push(store, "held", held_answers, held_errors)
    deadline = time.monotonic() + WAIT
    while not _a_push_waits_on_a_lock():
        assert time.monotonic() < deadline, "the held push never reached the keys' index"
        assert held.is_alive(), held_answers or held_errors
        time.sleep(0.01)

    # Pushes sent while it waits are answered, and stored, before it.
    answers: list = []
    errors: list = []
    others = [_push(store, f"free-{n}", answers, errors) for n in range(3)]
    for other in others:
        # Half the holder's time: a push that waited for the held one would still be waiting.
        other.join(WAIT / 2)
        assert not other.is_alive(), "a push waited behind the held one"
    assert not errors, errors
    assert sorted(status for status, _ in answers) == [202, 202, 202]
    assert held.is_alive(), "the held push was answered while its duplicate was uncommitted"
    for n in range(3):
        event = Event.objects.get(store=store, message_id=f"free-{n}")
        assert Delivery.objects.filter(event=event, subscription=subscription).count() == 1

    # The uncommitted duplicate goes away: the held push stores its own event.
    release.set()
    held.join(WAIT)
    assert not held_errors, held_errors
    assert len(held_answers) == 1
    status, body = held_answers[0]
    assert status == 202, body
    assert body["duplicate"] is False
    assert str(Event.objects.get(store=store, message_id="held").uid) == body["event_id"]
