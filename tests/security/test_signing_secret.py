"""Signing secrets: encrypted at rest, rotated with a grace period during which deliveries carry a
signature under each secret (Standard Webhooks allows several)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from routing.encryption import secret_is_encrypted
from routing.fields import column_decrypt_existing, column_encrypt_existing
from routing.models import Subscription
from routing.operations import subscription_secret_rotate
from routing.transport.request import request_build
from tests.factories import SubscriptionFactory


def stored_columns(subscription: Subscription) -> tuple[str, str]:
    """What the database row itself holds, past the field's decryption."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT signing_secret, previous_signing_secret FROM routing_subscription WHERE id = %s",
            [subscription.pk],
        )
        return cursor.fetchone()


def grace_end(subscription: Subscription) -> None:
    """The rotation's grace period is over (as if its time had passed)."""
    Subscription.objects.filter(pk=subscription.pk).update(
        previous_signing_secret_expires_at=timezone.now() - timedelta(seconds=1)
    )


def signatures(headers: dict[str, str]) -> list[str]:
    return headers["webhook-signature"].split(" ")


@pytest.mark.django_db
def test_the_database_row_holds_only_the_encrypted_secret():
    subscription = SubscriptionFactory()
    assert subscription.signing_secret.startswith("whsec_")
    raw, _ = stored_columns(subscription)
    assert secret_is_encrypted(raw)
    assert subscription.signing_secret not in raw
    # Reading the row back gives the clear secret to Python.
    assert Subscription.objects.get(pk=subscription.pk).signing_secret == subscription.signing_secret


@pytest.mark.django_db
def test_rotation_returns_a_new_secret_and_keeps_the_old_one_encrypted_for_the_grace(settings):
    settings.HUB_SECRET_ROTATION_GRACE_SECONDS = 3600
    subscription = SubscriptionFactory()
    old = subscription.signing_secret

    new = subscription_secret_rotate(subscription_id=subscription.pk)

    assert new.startswith("whsec_") and new != old
    stored = Subscription.objects.get(pk=subscription.pk)
    assert stored.signing_secret == new
    assert stored.previous_signing_secret_active() == old
    expires = stored.previous_signing_secret_expires_at
    assert timezone.now() + timedelta(seconds=3500) < expires <= timezone.now() + timedelta(seconds=3600)
    raw_new, raw_old = stored_columns(subscription)
    assert secret_is_encrypted(raw_new) and secret_is_encrypted(raw_old)
    assert new not in raw_new and old not in raw_old


@pytest.mark.django_db
def test_the_previous_secret_is_not_used_once_the_grace_is_over(settings):
    settings.HUB_SECRET_ROTATION_GRACE_SECONDS = 3600
    subscription = SubscriptionFactory()
    subscription_secret_rotate(subscription_id=subscription.pk)
    grace_end(subscription)
    assert Subscription.objects.get(pk=subscription.pk).previous_signing_secret_active() == ""


@pytest.mark.django_db
def test_rotating_again_keeps_only_the_secret_it_replaces(settings):
    settings.HUB_SECRET_ROTATION_GRACE_SECONDS = 3600
    subscription = SubscriptionFactory()
    first = subscription.signing_secret
    second = subscription_secret_rotate(subscription_id=subscription.pk)
    third = subscription_secret_rotate(subscription_id=subscription.pk)
    stored = Subscription.objects.get(pk=subscription.pk)
    assert (stored.signing_secret, stored.previous_signing_secret_active()) == (third, second)
    assert first not in (stored.signing_secret, stored.previous_signing_secret)


@pytest.mark.django_db
def test_a_zero_grace_drops_the_old_secret_at_once(settings):
    settings.HUB_SECRET_ROTATION_GRACE_SECONDS = 0
    subscription = SubscriptionFactory()
    new = subscription_secret_rotate(subscription_id=subscription.pk)
    stored = Subscription.objects.get(pk=subscription.pk)
    assert stored.signing_secret == new
    assert (stored.previous_signing_secret, stored.previous_signing_secret_expires_at) == ("", None)
    assert stored_columns(subscription)[1] == ""


def test_a_request_signed_during_the_grace_verifies_under_either_secret():
    old, new = "whsec_" + "a" * 44, "whsec_" + "b" * 44
    request = request_build(
        url="https://example.com/hook",
        message="order:new",
        message_id="m-1",
        payload={"order": {"number": "R1"}},
        parameters=[],
        webhook_id="evt-1",
        signing_secret=new,
        previous_signing_secret=old,
        token="tok",
        timestamp=datetime.now(UTC),
    )
    headers = dict(request.headers)
    assert len(signatures(headers)) == 2 and all(s.startswith("v1,") for s in signatures(headers))
    for secret in (old, new):
        assert Webhook(secret).verify(request.body, headers)["message_id"] == "m-1"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "c" * 44).verify(request.body, headers)


@pytest.mark.django_db
def test_clear_secrets_left_by_older_rows_are_encrypted_by_the_migration_step():
    """The migration's data step (routing.fields.column_encrypt_existing) on rows written in clear."""
    subscriptions = SubscriptionFactory.create_batch(2)
    clear = {s.pk: s.signing_secret for s in subscriptions}
    with connection.cursor() as cursor:
        for pk, secret in clear.items():
            cursor.execute("UPDATE routing_subscription SET signing_secret = %s WHERE id = %s", [secret, pk])
    # A row in clear is still readable (it is encrypted on its next save).
    assert Subscription.objects.get(pk=subscriptions[0].pk).signing_secret == clear[subscriptions[0].pk]

    assert column_encrypt_existing(Subscription, "signing_secret") == 2
    for subscription in subscriptions:
        raw, _ = stored_columns(subscription)
        assert secret_is_encrypted(raw) and clear[subscription.pk] not in raw
        assert Subscription.objects.get(pk=subscription.pk).signing_secret == clear[subscription.pk]
    # Running it again finds nothing left to do, and does not encrypt twice.
    assert column_encrypt_existing(Subscription, "signing_secret") == 0

    assert column_decrypt_existing(Subscription, "signing_secret") == 2
    assert {s.pk: stored_columns(s)[0] for s in subscriptions} == clear


@pytest.mark.django_db(transaction=True)
def test_migrating_encrypts_the_secrets_of_existing_subscriptions():
    """Migrate back to before the encrypted field, store a clear secret, migrate forward: the row
    is encrypted and reads back as the same secret."""
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.operations import RunPython

    executor = MigrationExecutor(connection)
    graph = executor.loader.graph
    [target] = [
        key
        for key, migration in executor.loader.disk_migrations.items()
        if key[0] == "routing"
        and any(
            isinstance(op, RunPython) and op.code.__name__ == "signing_secrets_encrypt" for op in migration.operations
        )
    ]
    [before] = [parent for parent in graph.node_map[target].parents if parent.key[0] == "routing"]
    latest = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([before.key])
        old_apps = executor.loader.project_state([before.key]).apps
        OldSubscription = old_apps.get_model("routing", "Subscription")
        row = OldSubscription.objects.create(
            name="legacy", url="https://example.com/hook", message_types=["*"], signing_secret="whsec_legacy"
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT signing_secret FROM routing_subscription WHERE id = %s", [row.pk])
            assert cursor.fetchone()[0] == "whsec_legacy"
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(latest)

    raw, previous = stored_columns(row)
    assert secret_is_encrypted(raw) and "whsec_legacy" not in raw
    assert previous == ""
    assert Subscription.objects.get(pk=row.pk).signing_secret == "whsec_legacy"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_real_delivery_verifies_under_either_secret_during_the_grace_and_only_the_new_one_after(
    worker, subscriber, api, settings
):
    settings.HUB_SECRET_ROTATION_GRACE_SECONDS = 3600
    subscription = SubscriptionFactory(url=subscriber.url("/rotating"), message_types=["order:*"])
    old = subscription.signing_secret
    new = subscription_secret_rotate(subscription_id=subscription.pk)

    def delivered(number: str) -> tuple[bytes, dict[str, str]]:
        before = len(subscriber.received("/rotating"))
        envelope = {"message": "order:new", "payload": {"order": {"number": number}}}
        response = api.post("/events", envelope, format="json")
        assert response.status_code == 202, response.content
        received = subscriber.wait_for("/rotating", count=before + 1)[-1]
        assert received.json()["payload"]["order"]["number"] == number
        return received.body, {k.lower(): v for k, v in received.headers.items()}

    body, headers = delivered("R-grace")
    assert len(signatures(headers)) == 2
    assert Webhook(new).verify(body, headers)["payload"]["order"]["number"] == "R-grace"
    assert Webhook(old).verify(body, headers)["payload"]["order"]["number"] == "R-grace"

    grace_end(subscription)
    # A pump reads its subscription once for its budget: one that began before the grace ended
    # (it sent R-grace, then claims again) may still sign with both until then, so R-after is
    # pushed once any such pump is past its budget.
    time.sleep(settings.HUB_DELIVERY_PUMP_SECONDS + 0.5)
    body, headers = delivered("R-after")
    assert len(signatures(headers)) == 1
    assert Webhook(new).verify(body, headers)["payload"]["order"]["number"] == "R-after"
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, headers)


@pytest.mark.django_db
def test_reencrypting_after_a_key_rotation_lets_the_old_key_go(settings):
    from io import StringIO

    from cryptography.fernet import Fernet
    from django.core.management import call_command

    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.HUB_ENCRYPTION_KEYS = [old_key]
    settings.HUB_SECRET_ROTATION_GRACE_SECONDS = 3600
    rotating, expired = SubscriptionFactory.create_batch(2)
    previous = rotating.signing_secret
    current = subscription_secret_rotate(subscription_id=rotating.pk)
    subscription_secret_rotate(subscription_id=expired.pk)
    grace_end(expired)
    expired_current = Subscription.objects.get(pk=expired.pk).signing_secret
    raw_before = stored_columns(rotating)

    settings.HUB_ENCRYPTION_KEYS = [new_key, old_key]
    out = StringIO()
    call_command("reencryptsecrets", stdout=out)
    assert "2 subscription(s)" in out.getvalue()

    settings.HUB_ENCRYPTION_KEYS = [new_key]
    stored = Subscription.objects.get(pk=rotating.pk)
    assert (stored.signing_secret, stored.previous_signing_secret_active()) == (current, previous)
    assert all(secret_is_encrypted(raw) for raw in stored_columns(rotating))
    assert not set(stored_columns(rotating)) & set(raw_before)
    # A previous secret past its grace is dropped, not carried over under the new key.
    stored = Subscription.objects.get(pk=expired.pk)
    assert (stored.signing_secret, stored.previous_signing_secret) == (expired_current, "")
    assert stored.previous_signing_secret_expires_at is None
