"""An endpoint that is down, then up again; one that stays down long enough to be disabled."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from routing.models import Delivery, Notification
from routing.pump import deliveries_pump
from routing.sweeper import deliveries_sweep
from tests.conftest import deliveries_settle
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply, Subscriber, free_port, pump_for, wait_until
from tests.reliability.conftest import push


@pytest.mark.django_db(transaction=True)
def test_subscriber_down_then_up_gets_everything_in_order(hub_worker, api, delivered):
    port = free_port()
    sub = SubscriptionFactory(url=f"http://127.0.0.1:{port}/late", message_types=["order:*"], retry_schedule=[0.5] * 40)
    push(api, [{"message": "order:updated", "payload": {"order": {"number": "D1", "seq": n}}} for n in range(5)])
    first = Delivery.objects.filter(subscription=sub).order_by("id").first()
    wait_until(lambda: Delivery.objects.filter(pk=first.pk, attempt_count__gte=2).exists(), 30, message="refused")
    assert "connection failed" in Delivery.objects.get(pk=first.pk).last_error

    late = Subscriber(port=port).start()
    try:
        delivered(5, subscription=sub)
        assert [r.json()["payload"]["order"]["seq"] for r in late.received("/late")] == [0, 1, 2, 3, 4]
        # The later ones waited their turn: one attempt each, none spent while the first was failing.
        attempts = list(
            Delivery.objects.filter(subscription=sub).order_by("id").values_list("attempt_count", flat=True)
        )
        assert attempts[0] >= 2 and attempts[1:] == [1, 1, 1, 1]
    finally:
        deliveries_settle()
        late.stop()


@pytest.mark.django_db
def test_endpoint_disabled_after_failing_too_long_keeps_its_deliveries_resendable(subscriber, settings):
    settings.HUB_SUBSCRIPTION_DISABLE_AFTER_SECONDS = 0  # "failed for too long" from the first failure
    sub = SubscriptionFactory(url=subscriber.url("/broken"), retry_schedule=[0, 0], max_in_flight=0)
    subscriber.program("/broken", Reply.error(500), Reply.error(500), Reply.error(500), Reply.ok())
    deliveries = [
        DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n}, resource_key=None)) for n in range(3)
    ]
    assert pump_for(deliveries[0].pk) == "retry"
    sub.refresh_from_db()
    assert not sub.is_enabled and "failed every attempt" in sub.disabled_reason
    assert Notification.objects.filter(subscription=sub, subject="Subscription disabled").exists()
    # Nothing is dropped: the deliveries wait, and are neither sent nor swept while it is off,
    # however long they have been due.
    assert set(Delivery.objects.filter(subscription=sub).values_list("state", flat=True)) <= {"pending", "retrying"}
    Delivery.objects.filter(subscription=sub).update(next_attempt_at=timezone.now() - timedelta(hours=1))
    assert pump_for(deliveries[1].pk) is None
    assert deliveries_sweep().enqueued == 0

    # Fixed and enabled again: the sweeper wakes the endpoint (once), and they all go.
    sub.is_enabled = True
    sub.save(update_fields=["is_enabled"])
    assert deliveries_sweep().enqueued == 1
    assert deliveries_pump(subscription_id=sub.pk).verdicts == {d.pk: "delivered" for d in deliveries}
