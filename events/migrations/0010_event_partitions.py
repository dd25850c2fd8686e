"""On PostgreSQL, events partitioned by RANGE of id, and the (store, message_id) key moved to a table
of its own that a trigger writes (docs/storage.md). Nothing changes on SQLite."""

from django.conf import settings
from django.db import migrations

from infra.partitions import table_partition, table_unpartition

KEYS = """
CREATE TABLE events_event_key (
    store_id bigint NOT NULL,
    message_id varchar(255) NOT NULL,
    event_id bigint NOT NULL,
    CONSTRAINT event_unique_store_message_id PRIMARY KEY (store_id, message_id)
);
CREATE INDEX events_event_key_event_id ON events_event_key (event_id);
INSERT INTO events_event_key (store_id, message_id, event_id)
    SELECT store_id, message_id, id FROM events_event WHERE store_id IS NOT NULL;

-- A store's message_id is taken once, whichever partition its event is in. The same event
-- inserted again (moved to a default partition by retention) keeps its key; a key whose event is
-- gone (its partition dropped, the key not yet deleted) is taken over. FOR UPDATE: two pushes
-- taking over one key take turns, and the second sees the first's event.
CREATE FUNCTION events_event_key_take() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owner bigint;
BEGIN
    IF NEW.store_id IS NULL THEN
        RETURN NEW;
    END IF;
    INSERT INTO events_event_key (store_id, message_id, event_id)
        VALUES (NEW.store_id, NEW.message_id, NEW.id) ON CONFLICT (store_id, message_id) DO NOTHING;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    SELECT k.event_id INTO owner FROM events_event_key k
        WHERE k.store_id = NEW.store_id AND k.message_id = NEW.message_id FOR UPDATE;
    IF owner = NEW.id THEN
        RETURN NEW;
    END IF;
    IF owner IS NOT NULL AND NOT EXISTS (SELECT 1 FROM events_event e WHERE e.id = owner) THEN
        UPDATE events_event_key SET event_id = NEW.id
            WHERE store_id = NEW.store_id AND message_id = NEW.message_id;
        RETURN NEW;
    END IF;
    RAISE unique_violation USING
        MESSAGE = 'duplicate key value violates unique constraint "event_unique_store_message_id"',
        DETAIL = format('Key (store_id, message_id)=(%s, %s) already exists.', NEW.store_id, NEW.message_id),
        CONSTRAINT = 'event_unique_store_message_id', TABLE = 'events_event';
END $$;
CREATE TRIGGER events_event_key_take BEFORE INSERT ON events_event
    FOR EACH ROW EXECUTE FUNCTION events_event_key_take();

-- A deleted event frees its message_id (a dropped partition's keys are deleted by retention).
CREATE FUNCTION events_event_key_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM events_event_key WHERE event_id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER events_event_key_forget AFTER DELETE ON events_event
    FOR EACH ROW EXECUTE FUNCTION events_event_key_forget();
"""


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table_partition(
        schema_editor,
        "events_event",
        span=settings.HUB_PARTITION_SPAN,
        primary_key=("id",),
        not_unique={"event_unique_store_message_id": "event_store_message_id"},
    )
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(KEYS)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER events_event_key_take ON events_event; DROP TRIGGER events_event_key_forget ON events_event;"
            " DROP FUNCTION events_event_key_take(); DROP FUNCTION events_event_key_forget();"
            " DROP TABLE events_event_key;"
        )
    table_unpartition(
        schema_editor,
        "events_event",
        primary_key=("id",),
        unique={
            "event_store_message_id": ("event_unique_store_message_id", True),
            "events_event_uid_key": ("events_event_uid_key", True),
        },
    )


class Migration(migrations.Migration):
    dependencies = [
        ("events", "0009_event_traceparent"),
    ]

    operations = [
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
