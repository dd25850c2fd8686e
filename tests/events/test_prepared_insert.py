"""The single-event INSERT is a prepared statement on PostgreSQL (integrator/postgresql/base.py):
prepared once per connection, the only statement prepared, and off with DB_PREPARED_STATEMENTS=0
for a PgBouncer that cannot keep prepared statements."""

from __future__ import annotations

import pytest
from django.db import connection, connections

from integrator.postgresql.base import PREPARE_ONLY_WHEN_ASKED

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements of the PostgreSQL backend"),
]


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements ORDER BY prepare_time")
        return [row[0] for row in cursor.fetchall()]


def _push(api, number: int):
    return api.post(
        "/events",
        {"message": "order:new", "message_id": f"prep-{number}", "payload": {"order": {"number": f"R{number}"}}},
        format="json",
    )


def test_pushes_share_one_prepared_insert_and_nothing_else_is_prepared(api, store):
    for number in range(3):
        assert _push(api, number).status_code == 202
    statements = _prepared()
    assert len(statements) == 1
    assert statements[0].startswith('INSERT INTO "events_event"')
    assert "$1" in statements[0]
    # Stored as sent through the prepared statement, each push its own row.
    assert sorted(store.events.values_list("message_id", flat=True)) == ["prep-0", "prep-1", "prep-2"]


def test_a_repeated_message_id_through_the_prepared_insert_is_still_a_duplicate(api, store):
    assert _push(api, 7).status_code == 202
    again = _push(api, 7)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert store.events.count() == 1


@pytest.mark.parametrize(("enabled", "threshold"), [(True, PREPARE_ONLY_WHEN_ASKED), (False, None)])
def test_the_setting_decides_on_each_new_connection(settings, enabled, threshold):
    settings.DB_PREPARED_STATEMENTS = enabled
    probe = type(connections["default"])({**connection.settings_dict}, alias="prepared-probe")
    try:
        probe.connect()
        # None is Django's own choice: psycopg then prepares nothing, even when a cursor asks.
        assert probe.connection.prepare_threshold == threshold
    finally:
        probe.close()
