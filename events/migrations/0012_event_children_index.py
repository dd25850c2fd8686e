"""Events' parent_id indexed where set only: events pushed by stores, nearly all of them, have no
parent, and every row version of an event wrote an entry there (docs/storage.md, Indexes). The
partial index serves the children look-ups and the foreign key's check (`parent_id = $1`)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0011_event_source_schedule"),
    ]

    operations = [
        # The foreign key's own index dropped by name: Django's AlterField would drop and re-add the
        # foreign key too, which on the partitioned table fails on the partitions' clones.
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "events_event_parent_id_47216859"',
                    'CREATE INDEX "events_event_parent_id_47216859" ON "events_event" ("parent_id")',
                ),
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="parent",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="children",
                        to="events.event",
                    ),
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(condition=models.Q(("parent__isnull", False)), fields=["parent"], name="event_children"),
        ),
    ]
