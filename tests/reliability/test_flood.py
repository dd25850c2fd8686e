"""200 events for 20 orders through the real API, worker and HTTP, with endpoints that fail at
random: every endpoint sees each order's events in the order the hub accepted them, and
acknowledges every event exactly once."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from routing.models import Attempt, Delivery
from tests.conftest import deliveries_settle
from tests.factories import SubscriptionFactory
from tests.live import Received, Reply
from tests.reliability.conftest import push

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = 20
EVENTS_PER_ORDER = 10
PATHS = ("/erp", "/wms")


class FlakyEndpoint:
    """Fails about a quarter of the requests (a seeded coin per request), and keeps what it saw."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.seen: list[tuple[str, int, bool]] = []  # (order number, sequence, acknowledged)
        self.acks: Counter[str] = Counter()

    def __call__(self, request: Received) -> Reply:
        body = request.json()
        ok = self.random.random() > 0.25
        order = body["payload"]["order"]
        self.seen.append((order["number"], order["seq"], ok))
        if ok:
            self.acks[body["message_id"]] += 1
            return Reply.ok(message_id=body["message_id"])
        return Reply.error(503)


def test_flood_with_random_failures_keeps_each_order_in_order_and_acknowledges_once(
    hub_worker, subscriber, api, delivered
):
    endpoints = {path: FlakyEndpoint(seed) for seed, path in enumerate(PATHS)}
    for path, endpoint in endpoints.items():
        subscriber.respond_with(path, endpoint)
        # Quick retries (through the broker's countdown) keep the test short; the order logic is the same.
        SubscriptionFactory(url=subscriber.url(path), message_types=["order:*"], retry_schedule=[0.2] * 30)

    # Ten rounds of one event per order, alternating single pushes and batches: new events arrive
    # while earlier ones of the same order are still failing and retrying.
    message_ids = []
    for seq in range(EVENTS_PER_ORDER):
        envelopes = [
            {
                "message": "order:new" if seq == 0 else "order:updated",
                "message_id": f"R{n}-{seq}",
                "payload": {"order": {"number": f"R{n}", "seq": seq}},
            }
            for n in range(ORDERS)
        ]
        if seq % 2:
            push(api, envelopes)
        else:
            for envelope in envelopes:
                push(api, envelope)
        message_ids += [e["message_id"] for e in envelopes]

    total = ORDERS * EVENTS_PER_ORDER
    try:
        delivered(total * len(PATHS), timeout=120)
    finally:
        deliveries_settle()

    for path, endpoint in endpoints.items():
        # Every event acknowledged exactly once by every endpoint.
        assert sorted(endpoint.acks) == sorted(message_ids), path
        assert set(endpoint.acks.values()) == {1}, path
        # Per order, the endpoint saw the sequence only ever move forward, one step after an ack.
        by_order: dict[str, list[tuple[int, bool]]] = defaultdict(list)
        for number, seq, ok in endpoint.seen:
            by_order[number].append((seq, ok))
        assert len(by_order) == ORDERS
        for number, seen in by_order.items():
            expected = 0
            for seq, ok in seen:
                assert seq == expected, f"{path} order {number}: got {seq} while {expected} was owed: {seen}"
                expected += ok
            assert expected == EVENTS_PER_ORDER
        failures = sum(not ok for _, _, ok in endpoint.seen)
        assert failures > 0, "the endpoint never failed: the test proved nothing about retries"

    # The hub's own record agrees: one successful attempt per delivery, nothing left open.
    assert Delivery.objects.exclude(state="delivered").count() == 0
    assert Attempt.objects.filter(succeeded=True).count() == total * len(PATHS)
