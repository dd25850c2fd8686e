import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from events.models import Event
from ops.selectors import deliveries_failed
from routing.models import Delivery, DeliveryState
from tests.factories import StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def failures():
    store = StoreFactory()
    erp, crm = SubscriptionFactory(name="erp"), SubscriptionFactory(name="crm")
    now = timezone.now()

    def delivery(sub, message, state=DeliveryState.FAILED, days_old=0):
        event = Event.objects.create(store=store, message=message, message_id=f"r{Event.objects.count()}", payload={})
        return Delivery.objects.create(
            event=event, subscription=sub, state=state, created_at=now - timedelta(days=days_old)
        )

    return {
        "erp_order_old": delivery(erp, "order:new", days_old=5),
        "erp_order": delivery(erp, "order:updated"),
        "erp_shipment": delivery(erp, "shipment:confirm"),
        "crm_order": delivery(crm, "order:new"),
        "erp_delivered": delivery(erp, "order:new", state=DeliveryState.DELIVERED),
        "erp_retrying": delivery(erp, "order:new", state=DeliveryState.RETRYING),
    }


def ids(qs) -> set[int]:
    return set(qs.values_list("id", flat=True))


def test_selection_takes_only_failed_deliveries_matching_every_filter(failures):
    f = {name: d.pk for name, d in failures.items()}
    assert ids(deliveries_failed()) == {f["erp_order_old"], f["erp_order"], f["erp_shipment"], f["crm_order"]}
    assert ids(deliveries_failed(subscription="erp")) == {f["erp_order_old"], f["erp_order"], f["erp_shipment"]}
    assert ids(deliveries_failed(message="order:*")) == {f["erp_order_old"], f["erp_order"], f["crm_order"]}
    assert ids(deliveries_failed(subscription="erp", message="order:new")) == {f["erp_order_old"]}
    since = timezone.now() - timedelta(days=1)
    assert ids(deliveries_failed(subscription="erp", since=since)) == {f["erp_order"], f["erp_shipment"]}


def test_dry_run_counts_with_aliases_and_relative_times(failures):
    out = io.StringIO()
    call_command("replay", "--message", "order:update", "--dry-run", stdout=out)
    assert out.getvalue().startswith("Dry run: 1 failed deliveries")
    out = io.StringIO()
    call_command("replay", "--subscription", "erp", "--since", "2d", "--dry-run", stdout=out)
    assert out.getvalue().startswith("Dry run: 2 failed deliveries")
    assert Delivery.objects.filter(state=DeliveryState.FAILED).count() == 4


def test_replay_wants_a_filter_and_known_names(failures):
    with pytest.raises(CommandError, match="--all"):
        call_command("replay", stdout=io.StringIO())
    with pytest.raises(CommandError, match="No subscription named 'nope'"):
        call_command("replay", "--subscription", "nope", stdout=io.StringIO())
    with pytest.raises(CommandError, match="--since"):
        call_command("replay", "--since", "yesterday-ish", "--dry-run", stdout=io.StringIO())


def test_replay_sends_the_matching_failures_again_with_progress(failures, capsys):
    out = io.StringIO()
    call_command("replay", "--subscription", "erp", "--progress", stdout=out)
    assert "3 deliveries sent again, 0 skipped" in out.getvalue()
    assert "3/3" in capsys.readouterr().err
    for name in ("erp_order_old", "erp_order", "erp_shipment"):
        failures[name].refresh_from_db()
        assert failures[name].state == DeliveryState.RETRYING
    failures["crm_order"].refresh_from_db()
    assert failures["crm_order"].state == DeliveryState.FAILED
