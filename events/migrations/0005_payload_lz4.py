"""Event payloads compressed by lz4 instead of pglz on PostgreSQL.

An order payload (8.5 KB of JSON, more as jsonb) is over the 2 KB TOAST threshold, so PostgreSQL
compresses every one it stores; with its default pglz that was a third of the server's CPU per
stored event (docs/performance.md, fourth round). lz4 compresses several times faster and
decompresses faster too; it stores a little more (5.6 KB instead of 4.2 KB per order).

Only rows written afterwards are compressed by lz4 (nothing is rewritten; both kinds read back
alike), and the statement changes nothing but the column's setting, so it is instant on a big
table. A server built without lz4 (it is optional at PostgreSQL's build time; Debian's and the
official images have it) keeps pglz: the migration says so and goes on.
"""

import logging

from django.db import DatabaseError, migrations, transaction

logger = logging.getLogger(__name__)


def _compression_set(method: str):
    def apply(apps, schema_editor) -> None:
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(apps.get_model("events", "Event")._meta.db_table)
        try:
            with transaction.atomic(using=connection.alias):
                schema_editor.execute(f"ALTER TABLE {table} ALTER COLUMN payload SET COMPRESSION {method}")
        except DatabaseError as exc:
            logger.warning("events.0005: payloads keep the server's default compression: %s", exc)

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0004_fewer_event_indexes"),
    ]

    operations = [
        migrations.RunPython(_compression_set("lz4"), _compression_set("default"), elidable=False),
    ]
