"""A worker that lost its broker tries it again every HUB_BROKER_RECONNECT_SECONDS, not on kombu's
backoff that grows to 30 s (integrator/consumer.py): the interval reaches the worker's connection."""

from __future__ import annotations

import kombu.connection
import pytest
from celery.worker.consumer import Consumer as CeleryConsumer

from integrator.celery import app
from integrator.consumer import Consumer


class Tried(Exception):
    pass


def test_the_worker_uses_the_hubs_consumer():
    assert app.conf.worker_consumer == "integrator.consumer:Consumer"
    assert issubclass(Consumer, CeleryConsumer)


@pytest.mark.parametrize("seconds", [1.0, 0.25])
def test_the_consumers_connection_retries_at_the_configured_interval(settings, monkeypatch, seconds):
    settings.HUB_BROKER_RECONNECT_SECONDS = seconds
    seen: list[tuple[float, float, float]] = []

    def retry_over_time(fun, catch, args, kwargs, errback, max_retries, start, step, most, *rest, **kw):
        seen.append((start, step, most))
        raise Tried

    monkeypatch.setattr(kombu.connection, "retry_over_time", retry_over_time)
    consumer = Consumer.__new__(Consumer)
    consumer.app = app
    consumer.first_connection_attempt = False
    consumer.broker_connection_retry_attempt = 0
    # Celery's own path: connection_for_read -> ensure_connected -> kombu's ensure_connection.
    with pytest.raises(Tried):
        consumer.connection_for_read()
    assert seen == [(seconds, 0, seconds)]
