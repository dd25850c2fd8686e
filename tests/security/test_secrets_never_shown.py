"""Tokens and signing secrets (the endpoint token included) never appear in API responses, logs,
admin lists or, in clear, the database."""

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from events.models import Event, Store
from routing.models import Attempt, Delivery, Subscription
from routing.operations import subscription_secret_rotate
from tests.factories import StoreFactory, SubscriptionFactory
from tests.live import pump_for

pytestmark = pytest.mark.django_db


def test_event_detail_shows_deliveries_without_subscription_secrets(store, api):
    subscription = SubscriptionFactory()
    event = Event.objects.create(store=store, message="order:new", message_id="m-1", payload={"number": "R1"})
    delivery = Delivery.objects.create(event=event, subscription=subscription)
    Attempt.objects.create(delivery=delivery, number=1, request_method="POST", request_url=subscription.url)

    response = api.get(f"/events/{event.uid}")
    assert response.status_code == 200
    text = response.content.decode()
    assert response.json()["deliveries"][0]["subscription"] == subscription.name
    assert subscription.signing_secret not in text
    assert subscription.token not in text
    assert store.token not in text and store.token_hash not in text


def test_push_and_list_replies_carry_no_token(store, api):
    pushed = api.post("/events", {"message": "order:new", "payload": {}}, format="json")
    listed = api.get("/events")
    for response in (pushed, listed):
        assert store.token not in response.content.decode()
        assert store.token_hash not in response.content.decode()


def test_store_admin_list_and_form_show_no_token_or_hash(admin_client):
    store = StoreFactory()
    stored = Store.objects.get(pk=store.pk)
    for url in ("/admin/events/store/", f"/admin/events/store/{store.pk}/change/"):
        page = admin_client.get(url)
        assert page.status_code == 200
        text = page.content.decode()
        assert store.name in text
        assert store.token not in text
        assert stored.token_hash not in text


@pytest.fixture
def rotated(settings):
    """A subscription mid-rotation: a current secret and a previous one still in its grace."""
    settings.HUB_SECRET_ROTATION_GRACE_SECONDS = 3600
    subscription = SubscriptionFactory()
    previous = subscription.signing_secret
    current = subscription_secret_rotate(subscription_id=subscription.pk)
    subscription.refresh_from_db()
    assert subscription.previous_signing_secret_active() == previous
    return subscription, current, previous


def _secrets_of(subscription: Subscription, *clear: str) -> list[str]:
    """Everything that must never be shown: the clear secrets and token, and the stored ciphertexts
    (a Fernet token is as good as the secret to whoever holds the key)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT signing_secret, previous_signing_secret, token FROM routing_subscription WHERE id = %s",
            [subscription.pk],
        )
        stored = cursor.fetchone()
    return [*clear, subscription.token, *stored]


def test_the_database_row_holds_neither_the_current_nor_the_previous_secret_in_clear(rotated):
    subscription, current, previous = rotated
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM routing_subscription WHERE id = %s", [subscription.pk])
        row = " ".join(str(value) for value in cursor.fetchone())
    assert current not in row and previous not in row and subscription.token not in row
    # Nor any recognisable piece of them: the base64 body of the whsec_ secret.
    assert current.removeprefix("whsec_")[:16] not in row and previous.removeprefix("whsec_")[:16] not in row


def test_event_detail_during_a_rotation_shows_neither_secret(store, api, rotated):
    subscription, current, previous = rotated
    event = Event.objects.create(store=store, message="order:new", message_id="m-2", payload={"number": "R2"})
    Delivery.objects.create(event=event, subscription=subscription)
    response = api.get(f"/events/{event.uid}")
    assert response.status_code == 200
    text = response.content.decode()
    for secret in _secrets_of(subscription, current, previous):
        assert secret not in text


def test_rotating_and_delivering_log_no_secret_or_token(rotated, subscriber, caplog):
    """Our own log records never carry a secret in the first place (the redaction filter in
    integrator/logfilters.py is the second line, tested in tests/ops/test_logging.py)."""
    import logging

    from routing.operations import subscription_secret_rotate

    subscription, current, previous = rotated
    Subscription.objects.filter(pk=subscription.pk).update(url=subscriber.url("/logged"))
    caplog.set_level(logging.DEBUG)
    newest = subscription_secret_rotate(subscription_id=subscription.pk)
    delivery = Delivery.objects.create(
        event=Event.objects.create(message="order:new", message_id="m-3", payload={}), subscription=subscription
    )
    assert pump_for(delivery.pk) == "delivered"
    assert len(subscriber.received("/logged")) == 1
    assert caplog.records, "the rotation and the delivery log something"
    logged = " ".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)
    for secret in _secrets_of(subscription, current, previous, newest):
        assert secret not in logged


def test_subscription_admin_list_and_form_show_no_secret_during_a_rotation(admin_client, rotated):
    subscription, current, previous = rotated
    for url in ("/admin/routing/subscription/", f"/admin/routing/subscription/{subscription.pk}/change/"):
        page = admin_client.get(url)
        assert page.status_code == 200
        text = page.content.decode()
        assert subscription.name in text
        for secret in _secrets_of(subscription, current, previous):
            assert secret not in text


def _stored_token(subscription: Subscription) -> str:
    return _stored(subscription, "token")


def test_the_endpoint_token_is_encrypted_at_rest_and_read_back_in_clear():
    from routing.encryption import secret_is_encrypted

    subscription = SubscriptionFactory()
    raw = _stored_token(subscription)
    assert secret_is_encrypted(raw) and subscription.token not in raw
    assert Subscription.objects.get(pk=subscription.pk).token == subscription.token
    # A token an admin sets by hand is encrypted the same way.
    chosen = Subscription.objects.get(pk=subscription.pk)
    chosen.token = "endpoint-chosen-token"
    chosen.save(update_fields=["token"])
    assert "endpoint-chosen-token" not in _stored_token(subscription)
    assert Subscription.objects.get(pk=subscription.pk).token == "endpoint-chosen-token"


@contextlib.contextmanager
def migrated_back_before(encrypting: str) -> Iterator[Any]:
    """The database migrated back to just before the routing migration whose RunPython is
    `encrypting` (its reverse run on the rows there), and forward again afterwards; yields the
    apps of that earlier state."""
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.operations import RunPython

    executor = MigrationExecutor(connection)
    [target] = [
        key
        for key, migration in executor.loader.disk_migrations.items()
        if key[0] == "routing"
        and any(isinstance(op, RunPython) and op.code.__name__ == encrypting for op in migration.operations)
    ]
    [before] = [p for p in executor.loader.graph.node_map[target].parents if p.key[0] == "routing"]
    latest = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([before.key])
        yield executor.loader.project_state([before.key]).apps
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(latest)


def _stored(subscription: Subscription, column: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM routing_subscription WHERE id = %s", [subscription.pk])  # noqa: S608
        value = cursor.fetchone()[0]
    return value if isinstance(value, str) else json.dumps(value)


@pytest.mark.django_db(transaction=True)
def test_migrating_encrypts_the_tokens_of_existing_subscriptions():
    """A token stored in clear before the encrypted field is encrypted by the migration and reads
    back unchanged."""
    from routing.encryption import secret_is_encrypted

    with migrated_back_before("subscription_tokens_encrypt") as apps:
        row = apps.get_model("routing", "Subscription").objects.create(
            name="legacy-token", url="https://example.com/hook", message_types=["*"], token="legacy-clear-token"
        )
        assert _stored(row, "token") == "legacy-clear-token"
    after = _stored(row, "token")
    assert secret_is_encrypted(after) and "legacy-clear-token" not in after
    row = Subscription.objects.get(pk=row.pk)
    assert row.token == "legacy-clear-token"


def test_reencrypting_secrets_rewrites_the_token_under_the_newest_key(settings):
    from io import StringIO

    from cryptography.fernet import Fernet
    from django.core.management import call_command

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.HUB_ENCRYPTION_KEYS = [old_key]
    subscription = SubscriptionFactory()
    before = _stored_token(subscription)

    settings.HUB_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("reencryptsecrets", stdout=StringIO())
    settings.HUB_ENCRYPTION_KEYS = [new_key]
    assert _stored_token(subscription) != before
    assert Subscription.objects.get(pk=subscription.pk).token == subscription.token


def _dump(tmp_path, *labels: str):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("dumpdata", *labels, stdout=out)
    path = tmp_path / "dump.json"
    path.write_text(out.getvalue())
    return path, out.getvalue()


def test_dumpdata_writes_no_secret_in_clear_and_loaddata_reads_them_back(rotated, tmp_path):
    from django.core.management import call_command

    subscription, current, previous = rotated
    Subscription.objects.filter(pk=subscription.pk).update(parameters=PARAMETERS)
    token = subscription.token
    path, text = _dump(tmp_path, "routing.subscription")
    assert subscription.name in text
    for secret in (current, previous, token, PARAMETER_SECRET):
        assert secret not in text and secret.removeprefix("whsec_")[:16] not in text

    Subscription.objects.filter(pk=subscription.pk).delete()
    call_command("loaddata", str(path), verbosity=0)
    loaded = Subscription.objects.get(pk=subscription.pk)
    assert (loaded.signing_secret, loaded.previous_signing_secret, loaded.token) == (current, previous, token)
    assert loaded.parameters == PARAMETERS
    assert PARAMETER_SECRET not in _stored(loaded, "parameters")
    from routing.encryption import secret_is_encrypted

    assert all(secret_is_encrypted(stored) for stored in _secrets_of(loaded)[1:])  # encrypted again


def test_a_dump_from_a_hub_with_other_keys_is_refused_naming_the_field(settings, tmp_path):
    from cryptography.fernet import Fernet
    from django.core.management import call_command
    from django.core.serializers.base import DeserializationError

    settings.HUB_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    subscription = SubscriptionFactory()
    path, _ = _dump(tmp_path, "routing.subscription")
    Subscription.objects.filter(pk=subscription.pk).delete()

    settings.HUB_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(DeserializationError, match=r"'(parameters|token)' holds an encrypted secret that none of"):
        call_command("loaddata", str(path), verbosity=0)
    assert not Subscription.objects.filter(pk=subscription.pk).exists()


PARAMETER_SECRET = "shipstation-api-key-0123456789"
PARAMETERS = [{"name": "shipstation.api_key", "value": PARAMETER_SECRET}, {"name": "warehouse", "value": 3}]


def test_parameters_are_encrypted_at_rest_and_read_back_as_they_were():
    from routing.encryption import secret_is_encrypted
    from routing.replies import subscription_parameters_merge

    subscription = SubscriptionFactory(parameters=PARAMETERS)
    stored = _stored(subscription, "parameters")
    assert PARAMETER_SECRET not in stored and "shipstation" not in stored
    assert secret_is_encrypted(json.loads(stored))
    assert Subscription.objects.get(pk=subscription.pk).parameters == PARAMETERS
    # What an endpoint's reply sets (PROTOCOL §3) goes through a queryset update: encrypted too.
    merged = subscription_parameters_merge(
        subscription_id=subscription.pk, parameters=[{"name": "last_sync", "value": "2026-12-01T10:00:00Z"}]
    )
    assert "2026-12-01T10" not in _stored(subscription, "parameters")
    assert (
        Subscription.objects.get(pk=subscription.pk).parameters
        == merged
        == [
            *PARAMETERS,
            {"name": "last_sync", "value": "2026-12-01T10:00:00Z"},
        ]
    )


@pytest.mark.django_db(transaction=True)
def test_migrating_encrypts_the_parameters_of_existing_subscriptions():
    from routing.encryption import secret_is_encrypted

    current = SubscriptionFactory(parameters=PARAMETERS)
    with migrated_back_before("subscription_parameters_encrypt") as apps:
        # Migrating back put the current row's parameters back in clear, as the old field reads them.
        assert json.loads(_stored(current, "parameters")) == PARAMETERS
        row = apps.get_model("routing", "Subscription").objects.create(
            name="legacy-parameters", url="https://example.com/hook", message_types=["*"], parameters=PARAMETERS
        )
        assert PARAMETER_SECRET in _stored(row, "parameters")
    for subscription in (row, current):
        after = _stored(subscription, "parameters")
        assert PARAMETER_SECRET not in after and secret_is_encrypted(json.loads(after))
        assert Subscription.objects.get(pk=subscription.pk).parameters == PARAMETERS
    row = Subscription.objects.get(pk=row.pk)
    assert row.parameters == PARAMETERS


def test_reencrypting_secrets_rewrites_the_parameters_under_the_newest_key(settings):
    from io import StringIO

    from cryptography.fernet import Fernet
    from django.core.management import call_command

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.HUB_ENCRYPTION_KEYS = [old_key]
    subscription = SubscriptionFactory(parameters=PARAMETERS)
    settings.HUB_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("reencryptsecrets", stdout=StringIO())
    settings.HUB_ENCRYPTION_KEYS = [new_key]
    assert Subscription.objects.get(pk=subscription.pk).parameters == PARAMETERS
