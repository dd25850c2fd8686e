"""delivery_due holds the deliveries not delivered only: a delivery's last UPDATE (to delivered)
no longer writes an entry to it, and it stays as small as the queue and the failures instead of
growing with history. Its readers (the queue's counts and lag, a state filter other than
delivered) all name states it holds (docs/storage.md, Indexes).

Built while pushes and deliveries go on (infra.partitions.index_replace_online): a plain CREATE
INDEX would stop every write to the deliveries for as long as it reads them."""

from django.db import migrations, models

from infra.partitions import index_replace_online

OLD = models.Index(fields=["state", "next_attempt_at"], name="delivery_due")
NEW = models.Index(
    condition=models.Q(("state", "delivered"), _negated=True), fields=["state", "next_attempt_at"], name="delivery_due"
)


def forward(apps, schema_editor):
    index_replace_online(schema_editor, apps.get_model("routing", "Delivery"), OLD, NEW)


def backward(apps, schema_editor):
    index_replace_online(schema_editor, apps.get_model("routing", "Delivery"), NEW, OLD)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("events", "0012_event_children_index"),
        ("routing", "0018_delivery_attempt_fewer_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, backward)],
            state_operations=[
                migrations.RemoveIndex(model_name="delivery", name="delivery_due"),
                migrations.AddIndex(model_name="delivery", index=NEW),
            ],
        ),
    ]
