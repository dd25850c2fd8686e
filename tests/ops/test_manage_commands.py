"""The management API's operations as manage.py commands."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from events.models import Event, Store
from ops.models import SCOPES, ManagementKey
from routing.models import Delivery, DeliveryState, Schedule, Subscription
from tests.factories import StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_createmanagementkey_prints_a_working_key_once_and_keeps_its_hash(store):
    out = run("createmanagementkey", "ci", "--scope", "stores:read", "--scope", "subscriptions:read")
    key = out.strip().splitlines()[-1]
    assert key.startswith("hubm_")
    stored = ManagementKey.objects.get(name="ci")
    assert stored.scopes == ["stores:read", "subscriptions:read"] and key not in (stored.key_hash, stored.key_hint)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/manage/v1/stores").status_code == 200
    assert client.post("/manage/v1/stores", {"name": "x"}, format="json").status_code == 403


def test_createmanagementkey_refuses_unknown_scopes_and_duplicates():
    with pytest.raises(CommandError, match="Unknown scope"):
        run("createmanagementkey", "ci", "--scope", "stores:admin")
    with pytest.raises(CommandError, match="at least one scope"):
        run("createmanagementkey", "ci")
    run("createmanagementkey", "ci", "--scope", "all")
    assert ManagementKey.objects.get(name="ci").scopes == list(SCOPES)
    with pytest.raises(CommandError, match="already exists"):
        run("createmanagementkey", "ci", "--scope", "all")


def test_hubstore_disables_enables_and_rotates(store):
    assert "disabled" in run("hubstore", "disable", store.name)
    assert Store.objects.get(pk=store.pk).is_active is False
    assert "already was disabled" in run("hubstore", "disable", store.name)
    run("hubstore", "enable", store.name)
    out = run("hubstore", "rotate", store.name, "--grace-seconds", "0")
    token = out.strip().splitlines()[-1]
    assert token.startswith("hub_") and Store.objects.get(pk=store.pk).token_hint == token[:10]
    assert store.name in run("hubstore", "list")
    assert json.loads(run("hubstore", "show", store.name))["name"] == store.name
    with pytest.raises(CommandError, match="No store named 'nope'"):
        run("hubstore", "disable", "nope")


def test_hubsubscription_disables_enables_rotates_and_tests():
    sub = SubscriptionFactory(name="erp")
    old = sub.signing_secret
    run("hubsubscription", "disable", "erp", "--reason", "maintenance")
    assert Subscription.objects.get(pk=sub.pk).disabled_reason == "maintenance"
    run("hubsubscription", "enable", "erp")
    assert Subscription.objects.get(pk=sub.pk).is_enabled
    secret = run("hubsubscription", "rotate", "erp").strip().splitlines()[-1]
    assert (
        secret.startswith("whsec_") and secret != old and Subscription.objects.get(pk=sub.pk).signing_secret == secret
    )
    assert "delivery" in run("hubsubscription", "test", "erp")
    shown = run("hubsubscription", "show", "erp")
    assert secret not in shown and json.loads(shown)["name"] == "erp"


def test_hubdeliveries_counts_then_retries_what_failed_in_a_window():
    erp = SubscriptionFactory(name="erp")
    store = StoreFactory()
    now = timezone.now()
    for hours in (1, 2, 30):
        event = Event.objects.create(store=store, message="order:new", message_id=f"h{hours}", payload={})
        Delivery.objects.create(
            event=event, subscription=erp, state=DeliveryState.FAILED, created_at=now - timedelta(hours=hours)
        )
    since = (now - timedelta(hours=24)).isoformat()
    counted = json.loads(run("hubdeliveries", "retry", "--subscription", "erp", "--since", since, "--dry-run"))
    assert counted == {"dry_run": True, "matched": 2, "selected": 2, "remaining": 0}
    assert Delivery.objects.filter(state=DeliveryState.FAILED).count() == 3
    done = json.loads(run("hubdeliveries", "retry", "--subscription", "erp", "--since", since))
    assert done["changed"] == 2 and Delivery.objects.filter(state=DeliveryState.FAILED).count() == 1
    with pytest.raises(CommandError, match="subscription"):
        run("hubdeliveries", "cancel", "--subscription", "ghost")
    with pytest.raises(CommandError, match="--since"):
        run("hubdeliveries", "cancel", "--since", "yesterday")


def test_hubsubscription_list_says_in_words_what_each_receives():
    SubscriptionFactory(name="erp", message_types=["order:*", "shipment:confirm"])
    pull = SubscriptionFactory(name="pull", message_types=[])
    Schedule.objects.create(subscription=pull, interval_seconds=300)
    SubscriptionFactory(name="unfinished", message_types=[])
    receives = {line.split("\t")[0]: line.split("\t")[3] for line in run("hubsubscription", "list").splitlines()}
    assert receives == {
        "erp": "order:*,shipment:confirm",
        "pull": "none (its schedule's ticks only)",
        "unfinished": "nothing (no message types, no schedule)",
    }
