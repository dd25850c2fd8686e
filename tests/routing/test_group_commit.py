"""Pushes that arrive while the process is committing others share one transaction (routing.outbox
_GroupCommit): each is answered as it would be alone, and only after the commit.

A first push is held inside its INSERT by a lock on the events table (taken on a connection of the
test's own), so the pushes sent meanwhile wait for it and are written together once it is released;
the rows' xmin (the id of the transaction that wrote them) tells which shared a commit."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from django.db import OperationalError, connection, connections
from rest_framework.test import APIClient

from events.models import Event
from routing import outbox
from routing.models import Delivery
from tests.factories import StoreFactory, SubscriptionFactory

WAIT = 20.0


def _envelope(message_id: str) -> dict:
    return {"message": "order:new", "message_id": message_id, "payload": {"order": {"number": message_id}}}


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


class Pushes:
    """Pushes sent from threads of their own, as gunicorn's would; their answers by label (the
    message_id unless told)."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict]] = {}
        self.threads: list[threading.Thread] = []

    def send(self, store, message_id: str, label: str | None = None) -> None:
        def push() -> None:
            try:
                client = APIClient()
                client.raise_request_exception = False
                client.credentials(HTTP_AUTHORIZATION=f"Bearer {store.token}")
                response = client.post("/events", _envelope(message_id), format="json")
                self.answers[label or message_id] = (response.status_code, json.loads(response.content))
            finally:
                connections.close_all()

        thread = threading.Thread(target=push)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive()


def _waiting() -> int:
    with outbox._group_commit._lock:
        return len(outbox._group_commit._waiting)


def _first_held() -> bool:
    """The first push is the one being written, and it waits for the lock in its INSERT."""
    with outbox._group_commit._lock:
        if not outbox._group_commit._writing:
            return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s",
            ['%INSERT INTO "events_event"%'],
        )
        return cursor.fetchone()[0] == 1


@pytest.fixture
def events_locked():
    """A function that sends the first push, held in its INSERT, then the others behind it, and
    releases the lock once they all wait."""
    if connection.vendor != "postgresql":
        pytest.skip("the first push is held by a PostgreSQL table lock")
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    holder = psycopg.connect(**params)

    def held(pushes: Pushes, store, first: str, others: list[tuple]) -> None:
        holder.execute("LOCK TABLE events_event IN EXCLUSIVE MODE")
        pushes.send(store, first)
        _until(_first_held, "the first push waits for the lock")
        for count, (other_store, message_id, *label) in enumerate(others, 1):
            pushes.send(other_store, message_id, *label)
            _until(lambda count=count: _waiting() == count, "each push waits behind the first, in order")
        holder.commit()

    yield held
    holder.rollback()
    holder.close()


def _xmin(message_id: str) -> str:
    """The transaction that wrote the event's delivery: the events' own INSERT may run in a
    savepoint (a subtransaction, an xid of its own), the deliveries' never does."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.xmin::text FROM routing_delivery d JOIN events_event e ON e.id = d.event_id"
            " WHERE e.message_id = %s",
            [message_id],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_pushes_waiting_together_share_one_commit_and_each_gets_its_own_answer(events_locked, unconsumed_queue):
    # No worker takes their messages: a pump recording the four at once would give them one xmin.
    store, other_store = StoreFactory(), StoreFactory()
    subscription = SubscriptionFactory(message_types=["order:new"])
    pushes = Pushes()
    events_locked(pushes, store, "first", [(store, "a"), (other_store, "b"), (store, "c")])
    pushes.join()

    assert {message_id: answer[0] for message_id, answer in pushes.answers.items()} == dict.fromkeys(
        ["first", "a", "b", "c"], 202
    )
    ids = {message_id: answer[1]["event_id"] for message_id, answer in pushes.answers.items()}
    assert len(set(ids.values())) == 4
    for message_id, event_id in ids.items():
        event = Event.objects.get(uid=event_id)
        assert event.message_id == message_id
        assert event.store_id == (other_store if message_id == "b" else store).pk
        assert not pushes.answers[message_id][1]["duplicate"]
        assert Delivery.objects.filter(event=event, subscription=subscription).count() == 1
    # The three that waited were written by one transaction, the first by its own.
    assert _xmin("a") == _xmin("b") == _xmin("c") != _xmin("first")


@pytest.mark.django_db(transaction=True)
def test_a_repeated_message_id_among_them_is_answered_as_a_duplicate(events_locked):
    store = StoreFactory()
    SubscriptionFactory(message_types=["order:new"])
    pushes = Pushes()
    others = [(store, "twice", "twice-1"), (store, "first", "first-again"), (store, "twice", "twice-2"), (store, "new")]
    events_locked(pushes, store, "first", others)
    pushes.join()

    assert Event.objects.filter(store=store).count() == 3
    assert Delivery.objects.count() == 3
    expected = {"first": 202, "twice-1": 202, "first-again": 200, "twice-2": 200, "new": 202}
    assert {label: answer[0] for label, answer in pushes.answers.items()} == expected
    for label, status in expected.items():
        body = pushes.answers[label][1]
        event = Event.objects.get(store=store, message_id=label.split("-")[0])
        assert body["event_id"] == str(event.uid)
        assert body["duplicate"] is (status == 200)


@pytest.fixture
def refusing_trigger():
    """A trigger that makes PostgreSQL refuse some events: 'bad...' as a failing statement (a 500
    today), 'gone...' as a lost connection would (a 503 today)."""
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL trigger refuses the events")
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE OR REPLACE FUNCTION hub_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.message_id LIKE 'bad%' THEN RAISE EXCEPTION 'refused by the test'; END IF;
                IF NEW.message_id LIKE 'gone%' THEN
                    RAISE EXCEPTION 'gone in the test' USING ERRCODE = '08006';
                END IF;
                RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS hub_test_refuse ON events_event;
            CREATE TRIGGER hub_test_refuse BEFORE INSERT ON events_event
                FOR EACH ROW EXECUTE FUNCTION hub_test_refuse();
            """
        )
    yield
    # On the partitioned table the DROP locks every partition, and the session's worker (its
    # sweeps) may read them in another order meanwhile: a deadlock there is retried, not a failure.
    for attempt in range(5):
        try:
            with connection.cursor() as cursor:
                cursor.execute("DROP TRIGGER hub_test_refuse ON events_event; DROP FUNCTION hub_test_refuse();")
            return
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.2)


@pytest.mark.django_db(transaction=True)
def test_a_push_the_database_refuses_gets_its_own_error_and_the_others_are_stored(refusing_trigger, events_locked):
    store = StoreFactory()
    SubscriptionFactory(message_types=["order:new"])
    alone = Pushes()
    alone.send(store, "bad-alone")
    alone.send(store, "gone-alone")
    alone.join()
    assert alone.answers["bad-alone"][0] == 500
    assert alone.answers["gone-alone"][0] == 503

    pushes = Pushes()
    events_locked(pushes, store, "first", [(store, "a"), (store, "bad"), (store, "gone"), (store, "b")])
    pushes.join()

    assert pushes.answers["bad"] == alone.answers["bad-alone"]
    assert pushes.answers["gone"] == alone.answers["gone-alone"]
    for message_id in ("first", "a", "b"):
        status, body = pushes.answers[message_id]
        assert status == 202, body
        assert Event.objects.get(store=store, message_id=message_id).uid.hex == body["event_id"].replace("-", "")
    assert not Event.objects.filter(message_id__in=["bad", "gone", "bad-alone", "gone-alone"]).exists()
    assert Delivery.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_every_push_of_a_group_the_database_refuses_gets_the_error_it_gets_alone(refusing_trigger, events_locked):
    store = StoreFactory()
    alone = Pushes()
    alone.send(store, "gone-alone")
    alone.join()
    pushes = Pushes()
    events_locked(pushes, store, "first", [(store, "gone-1"), (store, "gone-2"), (store, "gone-3")])
    pushes.join()

    assert pushes.answers["first"][0] == 202
    for message_id in ("gone-1", "gone-2", "gone-3"):
        assert pushes.answers[message_id] == alone.answers["gone-alone"]
    assert alone.answers["gone-alone"][0] == 503
    assert Event.objects.filter(store=store).count() == 1
