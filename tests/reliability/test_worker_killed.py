"""A worker SIGKILLed in the middle of a delivery loses nothing: once its lease runs out the
sweeper hands the delivery to a worker again, it is sent again (same webhook-id, so the endpoint
can dedup) and recorded once as delivered; nothing stays `delivering`."""

from __future__ import annotations

import pytest

from routing.models import Delivery
from tests.conftest import deliveries_settle
from tests.factories import SubscriptionFactory
from tests.live import Reply, wait_until
from tests.reliability.conftest import push

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_killed_during_a_slow_delivery_delivers_it_again_once(hub_worker, subscriber, api, delivered):
    sub = SubscriptionFactory(url=subscriber.url("/slow"), message_types=["order:*"], timeout_seconds=3)
    subscriber.program("/slow", Reply.slow(2), Reply.ok())
    [event] = push(api, {"message": "order:new", "payload": {"order": {"number": "R100"}}})
    delivery = Delivery.objects.get(event=event, subscription=sub)

    subscriber.wait_for("/slow", 1, timeout=60)
    delivery.refresh_from_db()
    assert delivery.state == "delivering"  # the worker is inside the HTTP exchange right now
    hub_worker.kill()
    try:
        # Nobody is left to finish it: it stays claimed until its lease runs out.
        delivery.refresh_from_db()
        assert (delivery.state, delivery.attempt_count) == ("delivering", 1)
    finally:
        hub_worker.start()  # what a supervisor does

    delivered(1, timeout=60, pk=delivery.pk)
    try:
        first, second = subscriber.wait_for("/slow", 2, timeout=60)
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(event.uid)
        delivery.refresh_from_db()
        attempts = list(delivery.attempts.order_by("number"))
        assert [(a.number, a.succeeded) for a in attempts] == [(1, False), (2, True)]
        assert "lease expired" in attempts[0].error
        assert not Delivery.objects.filter(state="delivering").exists()
        event.refresh_from_db()
        wait_until(lambda: (event.refresh_from_db(), event.status)[1] == "delivered", 10)
        assert len(subscriber.received("/slow")) == 2
    finally:
        deliveries_settle()
