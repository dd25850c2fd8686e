"""The broker (a private redis-server on its own port, never the shared one) dies: POST /events
still answers 202 and stores every event; when Redis is back, empty, the sweeper rebuilds what the
broker lost from the database and everything is delivered, once, without anyone clicking."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from routing import wakeup
from routing.models import Delivery
from tests.conftest import deliveries_settle
from tests.factories import SubscriptionFactory
from tests.live import RedisServer, Worker, workers_paused
from tests.reliability.conftest import push, worker_new

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary"),
]


def broker_switch(url: str, transport_options: dict) -> None:
    """Point this process's Celery app (what the API publishes with) at another broker."""
    from integrator.celery import app

    app.conf.update(broker_url=url, broker_write_url=url, broker_read_url=url)
    app.conf.broker_transport_options = transport_options
    # Forget the pools, without closing them: kombu keeps them in a process-wide registry by URL,
    # and a closed one would be handed back when the old URL is switched back in.
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def private_broker(transactional_db) -> Iterator[tuple[RedisServer, Worker]]:
    from integrator.celery import app

    redis = RedisServer().start()
    saved = (app.conf.broker_url, dict(app.conf.broker_transport_options or {}))
    broker_switch(redis.url, {"visibility_timeout": 3600})
    wakeup._broker_down_until[0] = 0.0
    try:
        with workers_paused():  # the package's worker sweeps too and would deliver through its own broker
            worker = worker_new("broker", CELERY_BROKER_URL=redis.url).start()
            try:
                yield redis, worker
            finally:
                deliveries_settle()
                worker.stop()
    finally:
        broker_switch(saved[0], saved[1])
        wakeup._broker_down_until[0] = 0.0
        redis.kill()


def test_broker_down_accepts_and_stores_then_delivers_everything_when_back(private_broker, subscriber, api, delivered):
    redis, worker = private_broker
    sub = SubscriptionFactory(url=subscriber.url("/erp"), message_types=["order:*"])
    push(api, {"message": "order:new", "payload": {"order": {"number": "B0"}}})
    delivered(1, subscription=sub)  # the private broker really carries the work

    redis.kill()
    started = time.monotonic()
    during = [push(api, {"message": "order:new", "payload": {"order": {"number": f"B{n}"}}})[0] for n in (1, 2, 3)]
    during += push(api, [{"message": "order:new", "payload": {"order": {"number": f"B{n}"}}} for n in (4, 5, 6)])
    # Stored and owed, in no broker: the sweeper's to send.
    waiting = Delivery.objects.filter(event__in=during, subscription=sub)
    assert waiting.count() == 6
    assert set(waiting.values_list("state", flat=True)) == {"pending"}
    # A dead broker is not every push's problem: after the first failure, pushes skip the broker
    # (HUB_BROKER_BACKOFF_SECONDS) instead of each waiting out the client's connection attempts.
    assert wakeup._broker_down_until[0] > started

    redis.start()  # same port, empty: whatever the old one held is gone
    delivered(7, timeout=90, subscription=sub)
    numbers = sorted(r.json()["payload"]["order"]["number"] for r in subscriber.received("/erp"))
    assert numbers == [f"B{n}" for n in range(7)]
