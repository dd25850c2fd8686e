"""Schedules in the hub's file: hubexport writes them, hubapply creates, changes and (with --prune)
removes them, idempotently and all or nothing, refusing a bad one by item and field."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.utils import timezone

from events.models import Store
from routing.models import Schedule, Subscription
from tests.factories import SubscriptionFactory
from tests.ops.test_hubapply import HUB, apply, export

pytestmark = pytest.mark.django_db

# The hub's file with a subscription that only pulls (no message types) and two schedules.
PULLS = (
    HUB
    + """  - name: shop-pull
    url: https://shop.example.com/pull
    store: acme
schedules:
  - subscription: acme-erp
    message: get_shipments
    cron: "*/15 * * * *"
    is_paused: true
  - subscription: shop-pull
    interval_seconds: 300
"""
)


def schedules() -> list:
    """Everything an apply could change of the schedules, their run state included."""
    return [
        (s.subscription.name, s.message, s.interval_seconds, s.cron, s.is_paused, s.next_run_at, s.updated_at)
        for s in Schedule.objects.select_related("subscription").order_by("subscription__name")
    ]


def test_apply_creates_the_schedules_of_the_file(tmp_path):
    out = apply(tmp_path, PULLS)
    assert "create schedule 'acme-erp'" in out and "create schedule 'shop-pull'" in out and "7 changes." in out
    erp, pull = Schedule.objects.select_related("subscription").order_by("subscription__name")
    assert (erp.message, erp.interval_seconds, erp.cron, erp.is_paused) == ("get_shipments", None, "*/15 * * * *", True)
    # Left out: the API's defaults.
    assert (pull.message, pull.interval_seconds, pull.cron, pull.is_paused) == ("get_orders", 300, "", False)
    assert pull.subscription.message_types == []
    # Worked out as the admin and the API do: an interval schedule runs at once.
    assert pull.next_run_at is not None and pull.next_run_at <= timezone.now()


def test_apply_twice_changes_no_schedule(tmp_path):
    apply(tmp_path, PULLS)
    before = schedules()
    assert apply(tmp_path, PULLS).strip() == "0 changes."
    assert schedules() == before


def test_export_then_apply_on_an_empty_hub_gives_the_same_document(tmp_path):
    apply(tmp_path, PULLS)
    # Run state is the hub's, not the file's: it is not exported.
    Schedule.objects.filter(subscription__name="shop-pull").update(
        last_run_at=timezone.now(), last_error="HTTP 500", next_run_at=timezone.now() + timedelta(hours=1)
    )
    exported = export()
    document = yaml.safe_load(exported)
    assert document["schedules"] == [
        {
            "subscription": "acme-erp",
            "message": "get_shipments",
            "interval_seconds": None,
            "cron": "*/15 * * * *",
            "is_paused": True,
        },
        {"subscription": "shop-pull", "message": "get_orders", "interval_seconds": 300, "cron": "", "is_paused": False},
    ]
    Subscription.objects.all().delete()
    Store.objects.all().delete()
    assert not Schedule.objects.exists()
    out = apply(tmp_path, exported, name="exported.yaml")
    assert "create schedule 'shop-pull'" in out
    assert export() == exported
    assert apply(tmp_path, exported, name="exported.yaml").strip() == "0 changes."
    # ...and as JSON.
    path = tmp_path / "hub.json"
    call_command("hubexport", str(path), stderr=io.StringIO())
    assert "0 changes." in apply(tmp_path, path.read_text(), name="again.json")


def test_a_changed_schedule_is_updated_naming_the_fields(tmp_path):
    apply(tmp_path, PULLS)
    pull = Schedule.objects.get(subscription__name="shop-pull")
    out = apply(tmp_path, PULLS.replace("interval_seconds: 300", 'cron: "0 * * * *"'))
    assert "update schedule 'shop-pull': interval_seconds, cron" in out and "1 change." in out
    pull.refresh_from_db()
    assert (pull.interval_seconds, pull.cron) == (None, "0 * * * *")
    # Its timing changed: the next run is the cron expression's.
    assert pull.next_run_at is not None and pull.next_run_at.minute == 0
    # Resumed by the file (is_paused left out means running, as in the API's PUT).
    out = apply(tmp_path, PULLS.replace("    is_paused: true\n", ""))
    assert "update schedule 'acme-erp': is_paused" in out
    assert Schedule.objects.get(subscription__name="acme-erp").is_paused is False


def test_a_schedule_may_name_a_subscription_the_file_leaves_out(tmp_path):
    apply(tmp_path, HUB)
    SubscriptionFactory(name="hand-made", message_types=[])
    out = apply(tmp_path, HUB + "schedules:\n  - {subscription: hand-made, interval_seconds: 60}\n")
    assert "create schedule 'hand-made'" in out
    assert Schedule.objects.get(subscription__name="hand-made").interval_seconds == 60


def test_schedules_are_removed_only_with_prune(tmp_path):
    apply(tmp_path, PULLS)
    without = PULLS.split("schedules:")[0]
    assert apply(tmp_path, without).strip() == "0 changes."
    assert Schedule.objects.count() == 2
    # Pruned of its schedule, the subscription that only pulls would receive nothing: refused.
    with pytest.raises(CommandError, match=r"subscriptions\[2\] \('shop-pull'\): message_types: A subscription"):
        apply(tmp_path, without, "--prune")
    assert Schedule.objects.count() == 2
    without = without.replace(
        "url: https://shop.example.com/pull\n    store: acme\n",
        'url: https://shop.example.com/pull\n    store: acme\n    message_types: ["order:new"]\n',
    )
    out = apply(tmp_path, without, "--prune")
    assert "delete schedule 'acme-erp'" in out and "delete schedule 'shop-pull'" in out
    assert "update subscription 'shop-pull': message_types" in out and "3 changes." in out
    assert not Schedule.objects.exists()
    # The subscriptions stay: the file names them.
    assert set(Subscription.objects.values_list("name", flat=True)) == {"acme-erp", "shop-pull", "warehouse"}
    assert "0 changes." in apply(tmp_path, without, "--prune")


def test_prune_deletes_the_schedule_before_its_subscription(tmp_path):
    apply(tmp_path, PULLS)
    without_pull = PULLS.split("  - name: shop-pull")[0] + "schedules: []\n"
    out = apply(tmp_path, without_pull, "--prune").splitlines()
    assert out.index("delete schedule 'shop-pull'") < out.index("delete subscription 'shop-pull'")
    assert not Subscription.objects.filter(name="shop-pull").exists() and not Schedule.objects.exists()


def test_dry_run_says_which_schedules_would_change_and_writes_nothing(tmp_path):
    out = apply(tmp_path, PULLS, "--dry-run")
    assert "would create schedule 'shop-pull'" in out and "Dry run: 7 changes." in out
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    "change,message",
    [
        (("- subscription: shop-pull", "- subscription: shop-pul"), "schedules[1] ('shop-pul'): subscription: No "),
        (("- subscription: acme-erp", "- subscription: shop-pull"), "schedules[1] ('shop-pull'): subscription: "),
        (("interval_seconds: 300", "interval_seconds: 0"), "schedules[1] ('shop-pull'): interval_seconds: "),
        (("interval_seconds: 300", "interval_seconds: soon"), "schedules[1] ('shop-pull'): interval_seconds: "),
        (("    interval_seconds: 300\n", ""), "schedules[1] ('shop-pull'): interval_seconds: Give an interval"),
        (('cron: "*/15 * * * *"', 'cron: "*/15 * * * *"\n    interval_seconds: 60'), "acme-erp'): cron: "),
        (('cron: "*/15 * * * *"', "cron: every hour"), "schedules[0] ('acme-erp'): cron: Not a cron expression"),
        (("message: get_shipments", "message: Get Shipments"), "schedules[0] ('acme-erp'): message: "),
        (("interval_seconds: 300", "interval: 300"), "schedules[1] ('shop-pull'): interval: Unknown field"),
        (("  - subscription: acme-erp\n", "  - message: get_orders\n"), "schedules[0]: subscription: "),
    ],
)
def test_a_bad_schedule_names_the_item_and_field_and_nothing_is_written(tmp_path, change, message):
    text = PULLS.replace(*change)
    assert text != PULLS
    with pytest.raises(CommandError) as raised:
        apply(tmp_path, text)
    assert message in str(raised.value) and "nothing was written" in str(raised.value)
    assert not Store.objects.exists() and not Subscription.objects.exists() and not Schedule.objects.exists()


def test_a_schedule_of_a_subscription_prune_would_delete_is_refused(tmp_path):
    apply(tmp_path, HUB)
    SubscriptionFactory(name="hand-made")
    text = HUB + "schedules:\n  - {subscription: hand-made, interval_seconds: 60}\n"
    with pytest.raises(CommandError, match=r"subscription: The subscription 'hand-made' is not in the file, so"):
        apply(tmp_path, text, "--prune")
    assert Subscription.objects.filter(name="hand-made").exists() and not Schedule.objects.exists()


def test_schedules_that_are_not_a_list_are_refused(tmp_path):
    with pytest.raises(CommandError, match="schedules: 'schedules' must be a list of items"):
        apply(tmp_path, HUB + "schedules: {subscription: acme-erp, interval_seconds: 60}\n")
    assert not Store.objects.exists()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # A new subscription with neither message types nor a schedule in the file.
        (HUB + "  - name: idle\n    url: https://idle.example.com/hub\n", "subscriptions[2] ('idle')"),
        # An existing one whose message types the file empties, with no schedule.
        (HUB.replace('message_types: ["*"]', "message_types: []"), "subscriptions[1] ('warehouse')"),
    ],
)
def test_a_subscription_that_would_receive_nothing_is_refused_by_item_and_field(tmp_path, text, where):
    apply(tmp_path, HUB)
    before = (list(Subscription.objects.values_list("name", "message_types")), Schedule.objects.count())
    with pytest.raises(CommandError) as raised:
        apply(tmp_path, text)
    assert str(raised.value) == (
        f"{where}: message_types: A subscription with no message types and no schedule receives nothing: "
        'give it message types (e.g. ["order:*"]) or a schedule. (nothing was written)'
    )
    assert (list(Subscription.objects.values_list("name", "message_types")), Schedule.objects.count()) == before


def test_a_subscription_with_no_message_types_may_keep_the_schedule_it_has(tmp_path):
    """Without --prune a schedule the file leaves out stays, so the subscription still pulls."""
    apply(tmp_path, PULLS)
    assert apply(tmp_path, PULLS.split("schedules:")[0]).strip() == "0 changes."
    assert Subscription.objects.get(name="shop-pull").message_types == []
