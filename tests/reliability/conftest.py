"""Live pieces for the reliability tests: a worker of their own (short lease margin, fast sweeper),
pushes through the real API, and helpers to wait on deliveries. Faults (a private redis-server, a
TCP proxy in front of PostgreSQL, SIGKILL) are set up by the tests that need them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from events.models import Event
from routing.models import Delivery
from tests.conftest import TEST_QUEUE, _worker_env
from tests.live import Worker, wait_until, workers_paused


def reliability_env(**overrides: str) -> dict[str, str]:
    """A worker environment on the test database: a sweeper every second and leases that run out one
    second after the endpoint's timeout, so a killed worker's delivery comes back quickly."""
    env = _worker_env(settings.DATABASES["default"])
    env.update(
        HUB_SWEEP_INTERVAL_SECONDS="1",
        HUB_SWEEP_LOST_AFTER_SECONDS="3",
        HUB_DELIVERY_LEASE_MARGIN_SECONDS="1",
        HUB_DATABASE_RETRY_MAX_SECONDS="1",
    )
    env.update(overrides)
    return env


def worker_new(name: str, *, pool: str = "threads", concurrency: int = 4, **env: str) -> Worker:
    log_path = Path(settings.VAR_DIR) / "test-worker" / f"reliability-{name}.log"
    return Worker(env=reliability_env(**env), log_path=log_path, queue=TEST_QUEUE, pool=pool, concurrency=concurrency)


@pytest.fixture(scope="package")
def hub_worker(django_db_setup, _test_queue) -> Iterator[Worker]:
    """The only worker sweeping the test database while these tests run: a shared test worker, if
    one was started, is paused and started again afterwards."""
    with workers_paused():
        worker = worker_new("main").start()
        yield worker
        worker.stop()


def push(api: Any, envelope: dict[str, Any] | list[dict[str, Any]]) -> list[Event]:
    """POST /events (or /events/batch for a list) through the real API; every item must be accepted."""
    if isinstance(envelope, list):
        response = api.post("/events/batch", envelope, format="json")
        assert response.status_code in (200, 202, 207), response.content
        ids = [item["event_id"] for item in response.json()["results"]]
        assert len(ids) == len(envelope), response.content
    else:
        response = api.post("/events", envelope, format="json")
        assert response.status_code == 202, response.content
        ids = [response.json()["event_id"]]
    by_uid = {str(e.uid): e for e in Event.objects.filter(uid__in=ids)}
    return [by_uid[i] for i in ids]


def wait_delivered(count: int, timeout: float = 60, **filters: Any) -> None:
    """Wait until `count` deliveries matching `filters` are delivered; say what is left otherwise."""

    def done() -> bool:
        return Delivery.objects.filter(state="delivered", **filters).count() >= count

    def left() -> str:
        states = list(Delivery.objects.filter(**filters).values_list("id", "state", "last_error"))
        return f"{count} delivered; now {[s for s in states if s[1] != 'delivered'][:10]}"

    try:
        wait_until(done, timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(left()) from None


@pytest.fixture
def delivered() -> Callable[..., None]:
    return wait_delivered
