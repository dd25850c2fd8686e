from django.db import migrations, models


def ticks_relabel(apps, schema_editor):
    """Ticks made before the source existed were stored as "store": relabel them. A tick's origin is
    routing.schedules.TICK_ORIGIN + the schedule's id, and it has no store (a migration of events
    does not import routing, the layer above)."""
    Event = apps.get_model("events", "Event")
    Event.objects.filter(source="store", store__isnull=True, origin__startswith="schedule:").update(source="schedule")


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0010_event_partitions"),
    ]

    operations = [
        migrations.AlterField(
            model_name="event",
            name="source",
            field=models.CharField(
                choices=[
                    ("store", "Pushed by a store"),
                    ("reply", "Returned by an endpoint"),
                    ("schedule", "Made by a schedule"),
                ],
                default="store",
                max_length=10,
            ),
        ),
        migrations.RunPython(ticks_relabel, migrations.RunPython.noop, elidable=True),
    ]
