"""Event payloads in a `json` column instead of `jsonb` on PostgreSQL (events.models.PayloadField).

jsonb's parse of every stored payload was about a third of PostgreSQL's time per stored event,
and the hub never queries inside a payload (docs/performance.md, fifth round). The change of type
rewrites the table under an exclusive lock: pushes wait until it ends (docs/operations.md,
"Upgrading", says how long it takes and how to plan for it).

On PostgreSQL the type and the column's lz4 compression (events.0005) are set by one statement:
a change of type alone resets the compression to the server's default, and the rewrite would
then compress every row with it. Elsewhere (SQLite) the column stays as it is: PayloadField is the
same text column there as Django's JSONField.
"""

from django.db import DatabaseError, migrations, transaction

import events.models


def _payload_type_set(sql_type: str):
    def apply(apps, schema_editor) -> None:
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(apps.get_model("events", "Event")._meta.db_table)
        change = f"ALTER TABLE {table} ALTER COLUMN payload TYPE {sql_type} USING payload::{sql_type}"
        try:
            with transaction.atomic(using=connection.alias):
                schema_editor.execute(f"{change}, ALTER COLUMN payload SET COMPRESSION lz4")
        except DatabaseError:
            # A server built without lz4: events.0005 kept its default compression, and so does this.
            schema_editor.execute(change)

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0006_event_uid_uuid7"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="event", name="payload", field=events.models.PayloadField()),
            ],
            database_operations=[
                migrations.RunPython(_payload_type_set("json"), _payload_type_set("jsonb"), elidable=False),
            ],
        ),
    ]
