"""A private Redis, broker and cache at once, dies: pushes are still stored and answered 202, and
delivered once it is back; a worker busy when it goes away survives without a restart."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from django.test import override_settings
from prometheus_client import REGISTRY

from routing import wakeup
from routing.models import Delivery
from tests.conftest import deliveries_settle
from tests.factories import SubscriptionFactory
from tests.live import RedisServer, Reply, wait_until, workers_paused
from tests.reliability.conftest import push, worker_new
from tests.reliability.test_broker_outage import broker_switch

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary"),
]


def redis_errors(use: str) -> float:
    return REGISTRY.get_sample_value("hub_redis_errors_total", {"use": use}) or 0.0


@pytest.fixture
def private_redis(transactional_db) -> Iterator[RedisServer]:
    """A redis-server of the test's own as this process's broker and cache, as web processes with
    REDIS_URL set have them."""
    from infra import cache as hub_cache
    from integrator.celery import app

    redis = RedisServer().start()
    saved = (app.conf.broker_url, dict(app.conf.broker_transport_options or {}))
    caches = {"default": {"BACKEND": "infra.cache.RedisCache", "LOCATION": redis.url, "KEY_PREFIX": "hub"}}
    limits = {"store_write": "600/minute", "store_read": "1200/minute"}
    broker_switch(redis.url, {"visibility_timeout": 3600})
    wakeup._broker_down_until[0] = 0.0
    hub_cache.cache_down_until[0] = 0.0
    try:
        with override_settings(CACHES=caches, HUB_RATE_LIMITS=limits):
            yield redis
    finally:
        broker_switch(saved[0], saved[1])
        wakeup._broker_down_until[0] = 0.0
        hub_cache.cache_down_until[0] = 0.0
        redis.kill()


def test_redis_down_pushes_are_accepted_stored_counted_and_delivered_when_back(private_redis, subscriber, api):
    redis = private_redis
    with workers_paused():  # the package's worker sweeps too and would deliver through its own broker
        worker = worker_new("redis-down", CELERY_BROKER_URL=redis.url, CACHE_REDIS_URL=redis.url).start()
        try:
            sub = SubscriptionFactory(url=subscriber.url("/erp"), message_types=["order:*"])
            push(api, {"message": "order:new", "payload": {"order": {"number": "R0"}}})
            subscriber.wait_for("/erp", 1, timeout=60)  # the private Redis really carries the work
            errors_before = {use: redis_errors(use) for use in ("rate_limit", "publish")}

            redis.kill()
            during = [
                push(api, {"message": "order:new", "payload": {"order": {"number": f"R{n}"}}})[0] for n in (1, 2, 3)
            ]
            during += push(api, [{"message": "order:new", "payload": {"order": {"number": f"R{n}"}}} for n in (4, 5)])
            response = api.get(f"/events/{during[0].uid}")
            assert response.status_code == 200, response.content
            # Stored and owed; the limiter's failure was counted, not turned into a 500. The pump that
            # delivered R0 may still be inside its budget and take some of them without the broker.
            assert Delivery.objects.filter(event__in=during, subscription=sub).count() == 5
            assert all(redis_errors(use) > before for use, before in errors_before.items())

            time.sleep(2)  # the worker meets the outage too, while pushes keep coming
            during += push(api, [{"message": "order:new", "payload": {"order": {"number": "R6"}}}])
            redis.start()  # same port, empty: whatever the old one held is gone

            def all_delivered() -> bool:
                return Delivery.objects.filter(subscription=sub, state="delivered").count() == 7

            wait_until(all_delivered, 120, interval=0.2, message=f"7 delivered (log: {worker.log_path})")
            numbers = sorted({r.json()["payload"]["order"]["number"] for r in subscriber.received("/erp")})
            assert numbers == [f"R{n}" for n in range(7)]
            assert worker.process is not None and worker.process.poll() is None
        finally:
            deliveries_settle()
            worker.stop()


def test_worker_busy_when_its_broker_dies_survives_and_delivers_after(private_redis, subscriber, api):
    """The pool is busy with slow deliveries and holds unacknowledged messages when Redis goes
    away; once Redis is back the same worker process delivers a push made after it."""
    redis = private_redis
    with workers_paused():
        worker = worker_new(
            "redis-busy", pool="prefork", concurrency=2, CELERY_BROKER_URL=redis.url, CACHE_REDIS_URL=redis.url
        ).start()
        try:
            slow = [
                SubscriptionFactory(url=subscriber.url(f"/slow{n}"), message_types=["order:*"], timeout_seconds=30)
                for n in range(3)
            ]
            for n in range(3):
                subscriber.program(f"/slow{n}", Reply.slow(6), Reply.ok())
            push(api, {"message": "order:new", "payload": {"order": {"number": "S1"}}})  # a delivery to each
            wait_until(
                lambda: Delivery.objects.filter(state="delivering").count() >= 2,
                60,
                message=f"both pool processes inside a slow delivery (log: {worker.log_path})",
            )

            redis.kill()
            time.sleep(10)
            redis.start()
            assert worker.process is not None
            wait_until(
                lambda: Delivery.objects.filter(subscription__in=slow, state="delivered").count() == 3,
                120,
                interval=0.2,
                message=f"the slow deliveries (log: {worker.log_path})",
            )
            Delivery.objects.filter(state__in=["pending", "retrying"]).update(state="cancelled")

            fast = SubscriptionFactory(url=subscriber.url("/after"), message_types=["order:updated"])
            push(api, {"message": "order:updated", "payload": {"order": {"number": "A1"}}})
            wait_until(
                lambda: Delivery.objects.filter(subscription=fast, state="delivered").exists(),
                60,
                interval=0.2,
                message=f"the push made after Redis came back (log: {worker.log_path})",
            )
            assert worker.process.poll() is None, worker.log()[-3000:]
            assert "Unrecoverable error" not in worker.log()
            # It tried Redis again every HUB_BROKER_RECONNECT_SECONDS (1), not on kombu's growing backoff.
            assert "Trying again in 1.00 second" in worker.log()
            assert "Trying again in 4.00 seconds" not in worker.log()
        finally:
            deliveries_settle()
            worker.stop()
