"""Fewer index entries per delivery: every UPDATE of a delivery changes its state, an indexed
column, so each row version writes to every index whose condition it meets (docs/storage.md,
Indexes).

- subscription_id and attempts' delivery_id lose their own index: delivery_subscription_state and
  attempt_unique_delivery_number start with them.
- replay_of_id is indexed where set only, and "failed in the last hour/day" indexes failed
  deliveries only.
- On partitioned PostgreSQL, delivery_unique_event_subscription goes: there it is a plain index
  (it cannot be unique), no query reads it, and the event_id index serves look-ups by event.
  SQLite keeps it, unique, as Django's state has it."""

import django.db.models.deletion
from django.db import migrations, models

from infra.partitions import partitioned


def index_drop(table: str, column: str, name: str) -> migrations.RunSQL:
    """Drop a column's index by its name (the same on SQLite and PostgreSQL); on a partitioned
    table that drops the partitions' indexes too."""
    return migrations.RunSQL(f'DROP INDEX IF EXISTS "{name}"', f'CREATE INDEX "{name}" ON "{table}" ("{column}")')


UNIQUE_EVENT_SUBSCRIPTION = "delivery_unique_event_subscription"


def unique_event_subscription_drop(apps, schema_editor):
    if partitioned("routing_delivery", using=schema_editor.connection):
        schema_editor.execute(f"DROP INDEX IF EXISTS {UNIQUE_EVENT_SUBSCRIPTION}")


def unique_event_subscription_create(apps, schema_editor):
    if partitioned("routing_delivery", using=schema_editor.connection):
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {UNIQUE_EVENT_SUBSCRIPTION} ON routing_delivery (event_id, subscription_id)"
            " WHERE replay_of_id IS NULL"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0017_delivery_send_alone"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="delivery", name="delivery_state_changed"),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("state", "failed")), fields=["updated_at"], name="delivery_failed_changed"
            ),
        ),
        # The foreign keys' own indexes dropped by name: Django's AlterField would drop and re-add
        # the foreign keys too, which on partitioned tables fails on the partitions' clones.
        migrations.SeparateDatabaseAndState(
            database_operations=[
                index_drop("routing_attempt", "delivery_id", "routing_attempt_delivery_id_65ea6307"),
                index_drop("routing_delivery", "subscription_id", "routing_delivery_subscription_id_3d7303a3"),
                index_drop("routing_delivery", "replay_of_id", "routing_delivery_replay_of_id_570beecc"),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="attempt",
                    name="delivery",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="attempts",
                        to="routing.delivery",
                    ),
                ),
                migrations.AlterField(
                    model_name="delivery",
                    name="subscription",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="deliveries",
                        to="routing.subscription",
                    ),
                ),
                migrations.AlterField(
                    model_name="delivery",
                    name="replay_of",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        editable=False,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="replays",
                        to="routing.delivery",
                    ),
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("replay_of__isnull", False)), fields=["replay_of"], name="delivery_replays"
            ),
        ),
        migrations.RunPython(unique_event_subscription_drop, unique_event_subscription_create, elidable=False),
    ]
