"""The heartbeat's renewal (routing.leases): fenced on the claim token, never past the hold limit,
and a lease of zero refused by a system check."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from routing.checks import delivery_time_limits_check
from routing.leases import Held, leases_renew
from routing.models import Delivery
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def claimed(sub, claim: int, *, state: str = "delivering") -> Delivery:
    delivery = DeliveryFactory(subscription=sub, event=EventFactory(resource_key=None))
    Delivery.objects.filter(pk=delivery.pk).update(
        state=state, claim=claim, attempt_count=1, lease_expires_at=timezone.now() + timedelta(seconds=1)
    )
    delivery.refresh_from_db()
    return delivery


def test_a_renewal_extends_only_its_own_claims_still_delivering(settings):
    settings.HUB_LEASE_SECONDS = 30
    sub = SubscriptionFactory()
    mine, theirs = claimed(sub, 7), claimed(sub, 8)
    # Taken back by the sweeper (its claim cleared) and claimed again by someone else: not ours.
    handed_on = claimed(sub, 9, state="retrying")
    now = timezone.now()
    renewed = leases_renew([Held(subscription_id=sub.pk, claim=7, hold_until=now + timedelta(hours=1))], now=now)
    assert renewed == 1
    leases = dict(Delivery.objects.values_list("pk", "lease_expires_at"))
    assert leases[mine.pk] == now + timedelta(seconds=30)
    assert leases[theirs.pk] == theirs.lease_expires_at
    assert leases[handed_on.pk] == handed_on.lease_expires_at


def test_a_renewal_never_goes_past_the_hold_limit(settings):
    settings.HUB_LEASE_SECONDS = 30
    sub = SubscriptionFactory()
    delivery = claimed(sub, 7)
    now = timezone.now()
    leases_renew([Held(subscription_id=sub.pk, claim=7, hold_until=now + timedelta(seconds=3))], now=now)
    delivery.refresh_from_db()
    assert delivery.lease_expires_at == now + timedelta(seconds=3)


def test_a_lease_of_zero_is_refused(settings):
    settings.HUB_LEASE_SECONDS = 0
    assert "hub.E005" in [problem.id for problem in delivery_time_limits_check()]
    settings.HUB_LEASE_SECONDS = 6
    assert "hub.E005" not in [problem.id for problem in delivery_time_limits_check()]
