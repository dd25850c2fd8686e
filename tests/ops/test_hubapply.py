"""The hub as code: hubapply makes a file true (idempotently, all or nothing), hubexport writes it."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from django.core.management import CommandError, call_command

from events.models import Event, Store
from ops.manage.document import hub_export
from routing.models import Delivery, Subscription
from tests.factories import EventFactory, StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

HUB = """
version: 1
stores:
  - name: acme
  - name: globex
    is_active: false
subscriptions:
  - name: acme-erp
    url: https://erp.example.com/hub
    store: acme
    message_types: ["order:*", "shipment:confirm"]
    filters:
      - {path: order.channel, op: eq, value: spree}
    parameters:
      - {name: api_key, value: k-123}
    http_method: PUT
    timeout_seconds: 5
    max_in_flight: 4
    retry_schedule: [5, 60]
  - name: warehouse
    url: https://wms.example.com/in
    message_types: ["*"]
    is_enabled: false
    disabled_reason: waiting for go-live
"""


def apply(tmp_path, text: str, *args: str, name: str = "hub.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    out = io.StringIO()
    call_command("hubapply", str(path), *args, stdout=out)
    return out.getvalue()


def export(*args: str) -> str:
    out = io.StringIO()
    call_command("hubexport", *args, stdout=out)
    return out.getvalue()


def snapshot() -> list:
    """Everything an apply could change, secrets included."""
    stores = list(Store.objects.order_by("name").values_list("name", "is_active", "token_hash"))
    subs = [
        (s.name, s.url, s.store_id, s.message_types, s.filters, s.parameters, s.signing_secret, s.token, s.is_enabled)
        for s in Subscription.objects.order_by("name")
    ]
    updated = list(Subscription.objects.order_by("name").values_list("updated_at", flat=True))
    return [stores, subs, updated]


def test_apply_creates_what_the_file_says_and_prints_the_secrets_once(tmp_path):
    out = apply(tmp_path, HUB)
    assert "create store 'acme'" in out and "create subscription 'acme-erp'" in out and "4 changes." in out
    erp = Subscription.objects.get(name="acme-erp")
    assert erp.store.name == "acme" and erp.message_types == ["order:*", "shipment:confirm"]
    assert erp.parameters == [{"name": "api_key", "value": "k-123"}] and erp.http_method == "PUT"
    assert (erp.timeout_seconds, erp.max_in_flight, erp.retry_schedule) == (5.0, 4, [5, 60])
    assert erp.signing_secret in out and erp.token in out
    assert Store.objects.get(name="globex").is_active is False
    warehouse = Subscription.objects.get(name="warehouse")
    assert (warehouse.is_enabled, warehouse.disabled_reason) == (False, "waiting for go-live")


def test_secrets_can_go_to_a_file_only_its_owner_reads(tmp_path):
    secrets = tmp_path / "secrets.txt"
    out = apply(tmp_path, HUB, "--secrets-file", str(secrets))
    erp = Subscription.objects.get(name="acme-erp")
    assert erp.signing_secret not in out and "6 secrets written to" in out
    assert erp.signing_secret in secrets.read_text() and erp.token in secrets.read_text()
    assert secrets.stat().st_mode & 0o777 == 0o600


def test_apply_twice_changes_nothing(tmp_path):
    apply(tmp_path, HUB)
    before = snapshot()
    out = apply(tmp_path, HUB)
    assert out.strip() == "0 changes."
    assert snapshot() == before


def test_export_then_apply_on_an_empty_hub_gives_the_same_hub(tmp_path):
    apply(tmp_path, HUB)
    # State the hub reached by itself is exported too.
    Subscription.objects.filter(name="acme-erp").update(is_enabled=False, disabled_reason="410 Gone")
    exported = export()
    Subscription.objects.all().delete()
    Store.objects.all().delete()
    assert not Store.objects.exists() and not Subscription.objects.exists()
    apply(tmp_path, exported, name="exported.yaml")
    assert export() == exported
    assert yaml.safe_load(exported)["subscriptions"][0]["disabled_reason"] == "410 Gone"


def test_export_holds_no_secret_token_or_parameter(tmp_path):
    apply(tmp_path, HUB)
    text = export()
    erp = Subscription.objects.get(name="acme-erp")
    for secret in (erp.signing_secret, erp.token, "k-123", "whsec_", "hub_"):
        assert secret not in text
    document = yaml.safe_load(text)
    assert "parameters" not in document["subscriptions"][0] and "signing_secret" not in document["subscriptions"][0]


def test_a_file_without_secrets_or_parameters_keeps_the_existing_ones(tmp_path):
    apply(tmp_path, HUB)
    erp = Subscription.objects.get(name="acme-erp")
    token_hash = Store.objects.get(name="acme").token_hash
    apply(tmp_path, export().replace("https://erp.example.com/hub", "https://erp.example.com/v2"))
    after = Subscription.objects.get(name="acme-erp")
    assert after.url == "https://erp.example.com/v2"
    assert (after.signing_secret, after.token, after.parameters) == (erp.signing_secret, erp.token, erp.parameters)
    assert Store.objects.get(name="acme").token_hash == token_hash


def test_an_item_changes_only_the_fields_that_differ_and_says_which(tmp_path):
    apply(tmp_path, HUB)
    out = apply(tmp_path, HUB.replace("timeout_seconds: 5", "timeout_seconds: 7").replace("is_active: false", ""))
    assert "update subscription 'acme-erp': timeout_seconds" in out
    assert "update store 'globex': is_active" in out and "2 changes." in out
    assert Store.objects.get(name="globex").is_active is True


def test_a_file_enabling_a_subscription_goes_through_the_enable_service(tmp_path):
    apply(tmp_path, HUB)
    out = apply(tmp_path, HUB.replace("is_enabled: false", "is_enabled: true").replace("waiting for go-live", "''"))
    assert "update subscription 'warehouse': is_enabled, disabled_reason" in out
    warehouse = Subscription.objects.get(name="warehouse")
    assert warehouse.is_enabled and warehouse.disabled_reason == ""


@pytest.mark.parametrize(
    "change,message",
    [
        (("https://wms.example.com/in", "http://169.254.169.254/x"), "subscriptions[1] ('warehouse'): url: "),
        (('["*"]', "order:new"), "subscriptions[1] ('warehouse'): message_types: "),
        (("store: acme", "store: initech"), "subscriptions[0] ('acme-erp'): store: No store named 'initech'"),
        (("op: eq", "op: equals"), "subscriptions[0] ('acme-erp'): filters: "),
        (("timeout_seconds: 5", "timeout_seconds: soon"), "subscriptions[0] ('acme-erp'): timeout_seconds: "),
        (("http_method: PUT", "htp_method: PUT"), "subscriptions[0] ('acme-erp'): htp_method: Unknown field"),
        (("- name: globex", "- name: acme"), "stores[1] ('acme'): name: The store 'acme' is declared twice"),
        (("{name: api_key, value: k-123}", "{name: api_key}"), "subscriptions[0] ('acme-erp'): parameters: "),
    ],
)
def test_an_invalid_file_names_the_item_and_field_and_writes_nothing(tmp_path, change, message):
    StoreFactory(name="existing")
    before = snapshot()
    with pytest.raises(CommandError) as raised:
        apply(tmp_path, HUB.replace(*change))
    assert message in str(raised.value) and "nothing was written" in str(raised.value)
    assert snapshot() == before


def test_a_file_that_is_not_yaml_or_not_a_hub_is_refused(tmp_path):
    with pytest.raises(CommandError, match="not valid YAML"):
        apply(tmp_path, "stores: [name: x")
    with pytest.raises(CommandError, match="not valid JSON"):
        apply(tmp_path, '{"stores": [,]}', name="hub.json")
    with pytest.raises(CommandError, match="Unknown key 'store'"):
        apply(tmp_path, "store: []")
    with pytest.raises(CommandError, match="version"):
        apply(tmp_path, "version: 2")
    assert not Store.objects.exists()


def test_dry_run_says_what_would_change_and_writes_nothing(tmp_path):
    out = apply(tmp_path, HUB, "--dry-run")
    assert "would create store 'acme'" in out and "Dry run: 4 changes." in out
    assert not Store.objects.exists() and not Subscription.objects.exists()


def test_nothing_is_deleted_without_prune(tmp_path):
    apply(tmp_path, HUB)
    kept_sub, kept_store = SubscriptionFactory(name="hand-made"), StoreFactory(name="hand-made-store")
    used = StoreFactory(name="with-events")
    EventFactory(store=used)
    assert "0 changes." in apply(tmp_path, HUB)
    assert Subscription.objects.filter(pk=kept_sub.pk).exists() and Store.objects.filter(pk=kept_store.pk).exists()
    out = apply(tmp_path, HUB, "--prune")
    assert "delete subscription 'hand-made'" in out and "delete store 'hand-made-store'" in out
    # A store with events keeps its history: it is disabled, not deleted.
    assert "disable store 'with-events'" in out
    assert not Subscription.objects.filter(pk=kept_sub.pk).exists()
    assert Store.objects.get(pk=used.pk).is_active is False and Event.objects.filter(store=used).exists()
    assert "0 changes." in apply(tmp_path, HUB, "--prune")


def test_json_files_are_read_and_written(tmp_path):
    apply(tmp_path, json.dumps(yaml.safe_load(HUB)), name="hub.json")
    path = tmp_path / "out.json"
    call_command("hubexport", str(path), stderr=io.StringIO())
    document = json.loads(path.read_text())
    assert [s["name"] for s in document["subscriptions"]] == ["acme-erp", "warehouse"]
    assert "0 changes." in apply(tmp_path, path.read_text(), name="again.json")


def test_apply_keeps_deliveries_of_subscriptions_it_changes(tmp_path):
    apply(tmp_path, HUB)
    erp = Subscription.objects.get(name="acme-erp")
    Delivery.objects.create(event=EventFactory(), subscription=erp)
    apply(tmp_path, HUB.replace("max_in_flight: 4", "max_in_flight: 2"))
    assert Delivery.objects.filter(subscription=erp).count() == 1


def test_export_matches_the_api_shape(tmp_path):
    apply(tmp_path, HUB)
    document = hub_export()
    assert document["version"] == 1
    assert document["stores"] == [{"name": "acme", "is_active": True}, {"name": "globex", "is_active": False}]
    assert document["subscriptions"][0]["store"] == "acme"
