"""The indexes of events, deliveries and attempts: each row version writes to every index whose
condition it meets, and no update of a delivery is HOT (its state is indexed), so an index nothing
needs costs every delivery (docs/storage.md, Indexes). Every foreign key keeps an index its check
can use (`column = $1`), and partitions made ahead carry the parent's indexes."""

from __future__ import annotations

import re

import pytest
from django.db import connection

from infra import partitions as parts

pytestmark = pytest.mark.django_db

# (table, column): a composite index starts with the column, so it needs none of its own.
COVERED = [("routing_delivery", "subscription_id"), ("routing_attempt", "delivery_id")]
# (table, column): nearly always NULL, so indexed where set only.
MOSTLY_NULL = [("routing_delivery", "replay_of_id"), ("events_event", "parent_id")]
TABLES = ("events_event", "routing_delivery", "routing_attempt")


def indexes(table: str) -> dict[str, tuple[list[str], str]]:
    """Each index of `table`: its columns and its condition ("" when it has none)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT i.relname, ARRAY(SELECT a.attname::text FROM unnest(x.indkey) WITH ORDINALITY k(n, o)"
                "  JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n ORDER BY k.o),"
                " COALESCE(pg_get_expr(x.indpred, x.indrelid), '')"
                " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = to_regclass(%s)",
                [table],
            )
            return {name: (list(columns), condition) for name, columns, condition in cursor.fetchall()}
        found = {}
        for name, details in connection.introspection.get_constraints(cursor, table).items():
            if details["index"] or details["unique"]:
                cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = %s", [name])
                row = cursor.fetchone()
                condition = row[0].split(" WHERE ", 1)[1] if row and row[0] and " WHERE " in row[0] else ""
                found[name] = (list(details["columns"]), condition)
        return found


def _plain(condition: str) -> str:
    return re.sub(r'[()"]', "", condition).strip()


@pytest.mark.parametrize(("table", "column"), COVERED)
def test_a_column_a_composite_index_starts_with_has_no_index_of_its_own(table, column):
    found = indexes(table)
    assert [name for name, (columns, _) in found.items() if columns == [column]] == []
    assert any(columns[0] == column and len(columns) > 1 and not cond for columns, cond in found.values())


@pytest.mark.parametrize(("table", "column"), MOSTLY_NULL)
def test_a_mostly_empty_reference_is_indexed_where_set_only(table, column):
    leading = [(name, cond) for name, (columns, cond) in indexes(table).items() if columns[0] == column]
    assert leading, f"no index starts with {table}.{column}"
    assert all(_plain(cond) == f"{column} IS NOT NULL" for _, cond in leading), leading


def test_only_failed_deliveries_are_indexed_by_their_last_change():
    found = indexes("routing_delivery")
    assert "delivery_state_changed" not in found
    columns, condition = found["delivery_failed_changed"]
    assert columns == ["updated_at"]
    assert re.sub(r"::\w+( \w+)?", "", _plain(condition)) == "state = 'failed'"


def test_the_routing_uniqueness_is_an_index_only_where_it_is_enforced():
    found = indexes("routing_delivery")
    if parts.partitioned("routing_delivery"):
        # A plain index there (uniqueness per partition only), which no query reads.
        assert "delivery_unique_event_subscription" not in found
    else:
        assert found["delivery_unique_event_subscription"][0] == ["event_id", "subscription_id"]


def _postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the catalog's foreign keys and partitions are PostgreSQL's")


def test_every_foreign_key_into_or_out_of_the_large_tables_has_an_index_its_check_can_use():
    """Deleting a row checks each foreign key that references it with `column = $1`: without an
    index starting with the column, on a table that is never small, that is a scan per row."""
    _postgresql()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, a.attname FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
            " WHERE c.contype = 'f' AND c.conparentid = 0 AND array_length(c.conkey, 1) = 1"
            " AND (c.conrelid = ANY(%s::regclass[]) OR c.confrelid = ANY(%s::regclass[]))",
            [list(TABLES), list(TABLES)],
        )
        keys = cursor.fetchall()
    assert len(keys) >= 8
    for table, column in keys:
        usable = [
            cond
            for columns, cond in indexes(table).values()
            if columns[0] == column and _plain(cond) in ("", f"{column} IS NOT NULL")
        ]
        assert usable, f"{table}.{column} has no index its foreign key check can use"


def test_a_partition_made_ahead_has_the_parents_indexes():
    _postgresql()
    for table in TABLES:
        partition = parts.partition_create(table, 10**12, 10**12 + 100)  # gone with the test's transaction
        parent = sorted((columns, _plain(cond)) for columns, cond in indexes(table).values())
        child = sorted((columns, _plain(cond)) for columns, cond in indexes(partition.name).values())
        assert child == parent


def test_delivered_deliveries_leave_the_queues_index():
    """A delivery's last UPDATE (to delivered) writes no entry to delivery_due, which then holds
    the queue and the failures, not the history."""
    columns, condition = indexes("routing_delivery")["delivery_due"]
    assert columns == ["state", "next_attempt_at"]
    assert re.sub(r"::\w+( \w+)?", "", _plain(condition)).replace("NOT state = ", "state <> ") == (
        "state <> 'delivered'"
    )
