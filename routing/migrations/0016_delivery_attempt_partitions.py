"""On PostgreSQL, deliveries partitioned by RANGE of id and attempts by RANGE of their delivery's id,
on the events' bounds: deliveries take their ids from the events' sequence from now on
(docs/storage.md). Nothing changes on SQLite."""

from django.conf import settings
from django.db import migrations

from infra.partitions import (
    partitions_ahead,
    sequence_share,
    sequence_unshare,
    table_partition,
    table_unpartition,
)


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    span = settings.HUB_PARTITION_SPAN
    sequence_share("routing_delivery", using=schema_editor.connection)
    table_partition(schema_editor, "routing_delivery", span=span, primary_key=("id",))
    table_partition(schema_editor, "routing_attempt", span=span, primary_key=("id", "delivery_id"))
    # The events' ids jumped past the deliveries': their partitions catch up.
    for table in ("events_event", "routing_delivery", "routing_attempt"):
        partitions_ahead(table, span=span, using=schema_editor.connection)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table_unpartition(schema_editor, "routing_attempt", primary_key=("id",))
    table_unpartition(
        schema_editor,
        "routing_delivery",
        primary_key=("id",),
        unique={"delivery_unique_event_subscription": ("delivery_unique_event_subscription", False)},
    )
    sequence_unshare("routing_delivery", using=schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0010_event_partitions"),
        ("routing", "0015_schedules"),
    ]

    operations = [
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
