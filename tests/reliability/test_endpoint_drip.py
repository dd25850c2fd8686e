"""An endpoint that trickles its reply a byte at a time, so no socket timeout fires, cannot hold a
worker: the attempt ends at the subscription's timeout as a wall-clock deadline, no second attempt
starts while it is on the wire, and the worker goes on to other endpoints' deliveries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from routing.models import Delivery
from tests.factories import SubscriptionFactory
from tests.live import Reply, Worker, wait_until, workers_paused
from tests.reliability.conftest import push, worker_new

pytestmark = pytest.mark.django_db(transaction=True)

# Far longer than the timeout: the margin between the two is what the assertions rest on.
DRIP_SECONDS = 60.0
TIMEOUT = 2


@pytest.fixture(scope="module")
def drip_worker(django_db_setup, _test_queue) -> Iterator[Worker]:
    with workers_paused():
        worker = worker_new("drip", concurrency=2).start()
        yield worker
        worker.stop()


def drip_subscription(path: str, subscriber, **fields):
    return SubscriptionFactory(
        url=subscriber.url(path), message_types=["order:*"], timeout_seconds=TIMEOUT, retry_enabled=False, **fields
    )


def state_of(delivery: Delivery) -> str:
    delivery.refresh_from_db()
    return delivery.state


def assert_cut_at_the_deadline(delivery: Delivery, subscriber, path: str) -> None:
    [attempt] = delivery.attempts.all()
    assert not attempt.succeeded and attempt.status_code is None
    assert attempt.error.startswith(f"timed out: no complete reply within {TIMEOUT}s"), attempt.error
    assert attempt.latency_ms < DRIP_SECONDS * 1000 / 4
    # One request, never two at once, and the hub hung up on it (the endpoint's next byte failed).
    assert len(subscriber.received(path)) == 1 and subscriber.peak(path) == 1
    wait_until(lambda: subscriber.drips(path) == ["cut"], DRIP_SECONDS / 4, message=f"{path}: the hub hung up")


def test_a_drip_is_cut_at_the_deadline_and_never_gets_a_second_attempt_meanwhile(drip_worker, subscriber, api):
    subscriber.program("/drip", Reply.drip(every=0.25, seconds=DRIP_SECONDS))
    sub = drip_subscription("/drip", subscriber)
    [event] = push(api, {"message": "order:new", "payload": {"order": {"number": "D1"}}})
    delivery = Delivery.objects.get(event=event, subscription=sub)

    wait_until(lambda: state_of(delivery) == "failed", DRIP_SECONDS / 2, message="the drip's attempt recorded")
    assert delivery.attempt_count == 1
    assert_cut_at_the_deadline(delivery, subscriber, "/drip")


def test_drips_in_the_headers_and_the_body_leave_the_worker_free_for_other_endpoints(drip_worker, subscriber, api):
    """Both of the worker's threads take a drip; an event for a healthy endpoint pushed after them
    is delivered, which needs a thread they let go."""
    subscriber.program("/drip-body", Reply.drip(every=0.25, seconds=DRIP_SECONDS, during="body"))
    subscriber.program("/drip-headers", Reply.drip(every=0.25, seconds=DRIP_SECONDS, during="headers"))
    drips = {path: drip_subscription(path, subscriber) for path in ("/drip-body", "/drip-headers")}
    healthy = SubscriptionFactory(url=subscriber.url("/fine"), message_types=["product:*"])
    [event] = push(api, {"message": "order:new", "payload": {"order": {"number": "D2"}}})
    for path in drips:
        subscriber.wait_for(path, 1, timeout=30)

    [other] = push(api, {"message": "product:new", "payload": {"product": {"sku": "S1"}}})
    fine = Delivery.objects.get(event=other, subscription=healthy)
    wait_until(lambda: state_of(fine) == "delivered", DRIP_SECONDS / 2, message="the healthy endpoint's delivery")
    for path, sub in drips.items():
        delivery = Delivery.objects.get(event=event, subscription=sub)
        wait_until(lambda d=delivery: state_of(d) == "failed", DRIP_SECONDS / 4, message=f"{path} recorded")
        assert_cut_at_the_deadline(delivery, subscriber, path)
