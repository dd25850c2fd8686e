"""A delivery of a batch whose worker died goes alone until it gets an answer (routing.sweeper).
A column with a constant default: no rewrite of the (partitioned) table on PostgreSQL."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("routing", "0016_delivery_attempt_partitions"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="send_alone",
            field=models.BooleanField(db_default=False, default=False, editable=False),
        ),
    ]
