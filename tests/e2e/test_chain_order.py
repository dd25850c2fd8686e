"""One order's long chain, for real: pushed through the API while a Celery worker sends it to a local
subscriber a batch at a time, beside another order, with a failure in the middle. Each order's
events arrive in the order they were accepted, the failed one retried before anything after it."""

from __future__ import annotations

import threading

import pytest

from routing.models import Delivery
from tests.factories import SubscriptionFactory
from tests.live import Received, Reply, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LONG, SHORT = 120, 30
FAILS = 47


def envelope(number: str, seq: int) -> dict:
    return {
        "message": "order:updated",
        "message_id": f"{number}-{seq}",
        "payload": {"order": {"number": number, "seq": seq}},
    }


def test_one_orders_chain_arrives_in_order_beside_another_with_a_failure_in_its_middle(worker, subscriber, api):
    failed = threading.Event()

    def reply(received: Received) -> Reply:
        order = received.json()["payload"]["order"]
        if order["number"] == "RC1" and order["seq"] == FAILS and not failed.is_set():
            failed.set()
            return Reply.error(500)
        return Reply.ok()

    subscriber.respond_with("/chain", reply)
    sub = SubscriptionFactory(url=subscriber.url("/chain"), retry_schedule=[0.5], max_in_flight=2)
    envelopes = [envelope("RC1", n) for n in range(LONG)]
    # The other order's events among the chain's, in the same pushes.
    for n in range(SHORT):
        envelopes.insert(4 * n + 1, envelope("RC2", n))
    for start in range(0, len(envelopes), 25):
        response = api.post("/events/batch", envelopes[start : start + 25], format="json")
        assert response.status_code in (200, 202), response.content

    def all_delivered() -> bool:
        return Delivery.objects.filter(subscription=sub, state="delivered").count() == LONG + SHORT

    wait_until(all_delivered, 90, interval=0.2, message=f"{LONG + SHORT} delivered")
    arrived = [r.json()["payload"]["order"] for r in subscriber.received("/chain")]
    long = [o["seq"] for o in arrived if o["number"] == "RC1"]
    short = [o["seq"] for o in arrived if o["number"] == "RC2"]
    # The failed one twice, nothing of its order between its failure and its retry.
    assert long == [*range(FAILS + 1), *range(FAILS, LONG)]
    assert short == list(range(SHORT))
    assert failed.is_set()
