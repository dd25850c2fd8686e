"""How a Celery worker uses the database: its own commits do not wait for the disk (at-least-once
delivery tolerates losing its last writes in a crash); everything else's do."""

from __future__ import annotations

import time

import pytest
from django.db import connection, connections
from django.db.backends.signals import connection_created

from integrator import celery

pytestmark = pytest.mark.django_db


def _synchronous_commit(conn) -> str:
    with conn.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.fixture
def postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("synchronous_commit is a PostgreSQL setting; SQLite has no such switch")


@pytest.mark.parametrize(("async_commit", "expected"), [(True, "off"), (False, "on")])
def test_worker_connections_commit_asynchronously_unless_turned_off(postgresql, settings, async_commit, expected):
    settings.HUB_WORKER_ASYNC_COMMIT = async_commit
    celery._worker_async_commit()
    fresh = connections.create_connection("default")
    try:
        assert _synchronous_commit(fresh) == expected
    finally:
        fresh.close()
        connection_created.disconnect(dispatch_uid="hub-worker-async-commit")


def test_every_connection_gives_up_on_a_silent_server_within_about_a_minute(postgresql):
    """A partitioned network answers nothing: no statement timeout can end the wait, TCP does."""
    connection.ensure_connection()
    params = connection.connection.info.get_parameters()
    probing = int(params["keepalives_idle"]) + int(params["keepalives_interval"]) * int(params["keepalives_count"])
    assert params["keepalives"] == "1" and probing <= 90
    assert 0 < int(params["tcp_user_timeout"]) <= 90_000


def test_web_connections_commit_synchronously(postgresql):
    # Nothing outside a worker connects the handler: an ingest is durable before it is answered.
    assert _synchronous_commit(connection) == "on"


@pytest.mark.django_db(transaction=True)
def test_worker_keeps_a_healthy_connection_between_tasks():
    # Celery's own fix-up would close it around every task; CELERY_DB_REUSE_MAX turns that down.
    from django.conf import settings

    assert settings.CELERY_DB_REUSE_MAX > 1
    connection.ensure_connection()
    # As DB_CONN_MAX_AGE=60 sets it on PostgreSQL (the embedded SQLite default closes every time).
    connection.close_at = time.monotonic() + 60
    before = connection.connection
    celery._db_connections_tidy()
    assert connection.connection is before


@pytest.mark.django_db(transaction=True)
def test_worker_drops_a_connection_older_than_conn_max_age():
    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1
    celery._db_connections_tidy()
    assert connection.connection is None
