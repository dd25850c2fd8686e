"""One busy store does not hold up the others: an endpoint's new delivery goes ahead of every
backlog's next turn, through a real worker and broker (the backlog lane, routing.wakeup)."""

from __future__ import annotations

import pytest

from integrator.celery import app
from routing.models import Delivery
from routing.wakeup import PUMP_TASK
from tests.conftest import TEST_QUEUE
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply, queue_purge, wait_until, workers_paused
from tests.reliability.conftest import worker_new

pytestmark = pytest.mark.django_db(transaction=True)

TURN = 0.5
# The default: a turn lasts 0.5-1.5 times TURN.
JITTER = 0.5
REPLY = 0.1
BACKLOGS = 6


def test_a_new_delivery_goes_ahead_of_every_backlogs_next_turn(subscriber):
    """One worker process, six endpoints with a backlog each, every one of them past its first
    turn: a new delivery to another endpoint waits for the turn under way only, not for the five
    handed on before it (their turns are FIFO among themselves)."""
    subscriber.respond_with("/backlog", lambda _request: Reply.slow(REPLY))
    busy = SubscriptionFactory.create_batch(BACKLOGS, url=subscriber.url("/backlog"), timeout_seconds=10)
    for sub in busy:
        for n in range(40):
            DeliveryFactory(subscription=sub, event=EventFactory(payload={"n": n}, resource_key=None))
    delivered = Delivery.objects.filter(subscription__in=busy, state="delivered")
    with workers_paused():
        queue_purge(TEST_QUEUE)
        for sub in busy:
            app.send_task(PUMP_TASK, args=[sub.pk])
        env = {
            "HUB_DELIVERY_PUMP_SECONDS": str(TURN),
            "HUB_DELIVERY_PUMP_JITTER": str(JITTER),
            "HUB_SWEEP_LOST_AFTER_SECONDS": "60",
        }
        worker = worker_new("lanes", pool="prefork", concurrency=1, **env).start()
        try:
            wait_until(
                lambda: delivered.values("subscription").distinct().count() == BACKLOGS, 30, message="a turn each"
            )
            new = DeliveryFactory(subscription=SubscriptionFactory(url=subscriber.url("/new")))
            before = delivered.count()
            app.send_task(PUMP_TASK, args=[new.subscription_id])  # as its push publishes it
            wait_until(lambda: Delivery.objects.get(pk=new.pk).state == "delivered", 30, message="the new one")
            meanwhile = delivered.count() - before
            # A turn sends at most its longest time / REPLY and one more; behind five turns it would
            # be ~25 at least.
            per_turn = int(TURN * (1 + JITTER) / REPLY) + 1
            assert meanwhile <= 2 * per_turn, f"{meanwhile} backlog deliveries went before the new one"
            # And the backlogs go on, from the backlog lane (every turn since the first is from there).
            after = delivered.count()
            wait_until(lambda: delivered.count() > after + per_turn, 30, message="the backlogs going on")
        finally:
            worker.stop()
            queue_purge(TEST_QUEUE)
            Delivery.objects.exclude(state__in=["delivered", "failed"]).update(state="cancelled")
