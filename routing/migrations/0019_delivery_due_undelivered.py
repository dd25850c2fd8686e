"""delivery_due holds the deliveries not delivered only: a delivery's last UPDATE (to delivered)
no longer writes an entry to it, and it stays as small as the queue and the failures instead of
growing with history. Its readers (the queue's counts and lag, a state filter other than
delivered) all name states it holds (docs/storage.md, Indexes)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0012_event_children_index"),
        ("routing", "0018_delivery_attempt_fewer_indexes"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="delivery",
            name="delivery_due",
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("state", "delivered"), _negated=True),
                fields=["state", "next_attempt_at"],
                name="delivery_due",
            ),
        ),
    ]
