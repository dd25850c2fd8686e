"""An index replaced while the table takes writes (infra.partitions.index_replace_online, the way
migrations change an index of the large tables): nothing is built under a lock that stops writes,
every partition gets its index, and a build cut short is taken up again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection, models
from django.test.utils import CaptureQueriesContext, isolate_apps

from infra.partitions import index_replace_online

pytestmark = pytest.mark.django_db(transaction=True)

TABLE = "scratch_online_index"
OLD = models.Index(fields=["state", "at"], name="scratch_due")
NEW = models.Index(fields=["state", "at"], name="scratch_due", condition=~models.Q(state="delivered"))


def _postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's partitions and CONCURRENTLY")


@pytest.fixture
def scratch() -> Iterator[type[models.Model]]:
    """A model over a table partitioned like the deliveries (two ranges and a default), with rows
    in each and OLD on it."""
    _postgresql()
    with isolate_apps("routing"):

        class Scratch(models.Model):  # noqa: DJ008 - a table to build indexes on, never shown
            state = models.CharField(max_length=12)
            at = models.DateTimeField()

            class Meta:
                app_label = "routing"
                db_table = TABLE

        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE {TABLE} (id bigint NOT NULL, state varchar(12) NOT NULL, at timestamptz NOT NULL)"
                " PARTITION BY RANGE (id)"
            )
            cursor.execute(f"CREATE TABLE {TABLE}_p0 PARTITION OF {TABLE} FOR VALUES FROM (0) TO (100)")
            cursor.execute(f"CREATE TABLE {TABLE}_p100 PARTITION OF {TABLE} FOR VALUES FROM (100) TO (200)")
            cursor.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
            cursor.execute(
                f"INSERT INTO {TABLE} SELECT g, CASE WHEN g % 3 = 0 THEN 'pending' ELSE 'delivered' END, now()"
                " FROM generate_series(0, 299) g"
            )
            cursor.execute(f'CREATE INDEX "scratch_due" ON {TABLE} (state, at)')
        try:
            yield Scratch
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


def _indexes() -> dict[str, tuple[str, bool, str | None]]:
    """Each index on the scratch table or a partition: its table, valid, and its parent index."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.relname, t.relname, x.indisvalid, p.relname FROM pg_index x"
            " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
            " LEFT JOIN pg_inherits h ON h.inhrelid = x.indexrelid LEFT JOIN pg_class p ON p.oid = h.inhparent"
            " WHERE t.relname LIKE %s",
            [f"{TABLE}%"],
        )
        return {name: (table, valid, parent) for name, table, valid, parent in cursor.fetchall()}


def _replace(model: type[models.Model], old: models.Index, new: models.Index) -> list[str]:
    with connection.schema_editor(atomic=False) as editor, CaptureQueriesContext(connection) as captured:
        index_replace_online(editor, model, old, new)
    return [q["sql"] for q in captured.captured_queries]


def test_every_partition_gets_the_new_index_built_concurrently(scratch):
    statements = _replace(scratch, OLD, NEW)

    builds = [sql for sql in statements if sql.startswith("CREATE INDEX")]
    # Only the parent's (ON ONLY: no rows read) is built without CONCURRENTLY.
    assert len(builds) == 4
    assert all("CONCURRENTLY" in sql or " ON ONLY " in sql for sql in builds), builds
    found = _indexes()
    assert found["scratch_due"] == (TABLE, True, None)
    children = {table for table, valid, parent in found.values() if parent == "scratch_due" and valid}
    assert children == {f"{TABLE}_p0", f"{TABLE}_p100", f"{TABLE}_default"}
    assert len(found) == 4  # the old one is gone
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_indexdef(to_regclass('scratch_due'))")
        assert "WHERE (NOT ((state)::text = 'delivered'::text))" in cursor.fetchone()[0]
        # A partition made afterwards gets it from the parent, as any index.
        cursor.execute(f"CREATE TABLE {TABLE}_p300 PARTITION OF {TABLE} FOR VALUES FROM (300) TO (350)")
    assert any(table == f"{TABLE}_p300" and parent == "scratch_due" for table, _, parent in _indexes().values())


def test_a_build_cut_short_is_taken_up_again(scratch):
    # As an interrupted run leaves it: the parent's index made, one partition's built and attached.
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX \"scratch_due__building\" ON ONLY {TABLE} (state, at) WHERE NOT (state = 'delivered')"
        )
        cursor.execute(
            f'CREATE INDEX "{TABLE}_p0_scratch_due__building" ON {TABLE}_p0 (state, at)'
            " WHERE NOT (state = 'delivered')"
        )
        cursor.execute(f'ALTER INDEX "scratch_due__building" ATTACH PARTITION "{TABLE}_p0_scratch_due__building"')
    assert _indexes()["scratch_due__building"][1] is False  # not valid until every partition has one

    _replace(scratch, OLD, NEW)

    found = _indexes()
    assert found["scratch_due"] == (TABLE, True, None)
    assert sorted(t for t, valid, parent in found.values() if parent == "scratch_due" and valid) == sorted(
        [f"{TABLE}_p0", f"{TABLE}_p100", f"{TABLE}_default"]
    )


def test_the_way_back_gives_the_plain_index_again(scratch):
    _replace(scratch, OLD, NEW)
    _replace(scratch, NEW, OLD)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_indexdef(to_regclass('scratch_due'))")
        definition = cursor.fetchone()[0]
    assert definition.endswith("USING btree (state, at)")


def test_on_a_plain_table_the_new_index_is_built_concurrently(scratch):
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {TABLE}")
        cursor.execute(
            f"CREATE TABLE {TABLE} (id bigint NOT NULL, state varchar(12) NOT NULL, at timestamptz NOT NULL)"
        )
        cursor.execute(f"INSERT INTO {TABLE} SELECT g, 'pending', now() FROM generate_series(0, 99) g")
        cursor.execute(f'CREATE INDEX "scratch_due" ON {TABLE} (state, at)')

    statements = _replace(scratch, OLD, NEW)

    builds = [sql for sql in statements if sql.startswith("CREATE INDEX")]
    assert builds and all(sql.startswith("CREATE INDEX CONCURRENTLY") for sql in builds), builds
    assert _indexes() == {"scratch_due": (TABLE, True, None)}
