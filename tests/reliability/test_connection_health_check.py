"""The PostgreSQL health check before a request's first query polls the socket instead of running
SELECT 1 (integrator/postgresql/base.py): a connection the server closed is still replaced."""

from __future__ import annotations

import select

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from tests.live import wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the PostgreSQL backend's health check"),
]


def _admin_conninfo() -> str:
    db = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        host=db.get("HOST") or "127.0.0.1", port=db.get("PORT") or 5432, user=db.get("USER"), dbname=db["NAME"]
    )


def test_an_idle_healthy_connection_is_usable_without_a_query(monkeypatch):
    connection.ensure_connection()

    def no_query(*args, **kwargs):
        raise AssertionError("the health check ran a query on a healthy connection")

    # Undone before the test's own teardown, which queries the database.
    with monkeypatch.context() as patch:
        patch.setattr(connection.connection, "cursor", no_query)
        assert connection.is_usable()


def test_a_connection_the_server_terminated_is_found_and_replaced():
    connection.ensure_connection()
    old = connection.connection
    with psycopg.connect(_admin_conninfo(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [old.info.backend_pid])
    # The server's goodbye reaches the socket a moment later.
    poller = select.poll()
    poller.register(old.fileno(), select.POLLIN)
    wait_until(lambda: bool(poller.poll(0)), 10, message="the server closing it")
    assert not connection.is_usable()

    # What Django does before a request's first query: the dead connection is closed, and the
    # query gets a new one.
    connection.health_check_enabled = True
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    assert connection.connection is not old
