"""Sending a batch that holds runs of one order's deliveries, against the real local subscriber: a
delivery that does not succeed holds back the rest of its order in the batch (they go back as they
were, no attempt spent), the other orders carry on, and the pump does not hand the endpoint on for
what was held back."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from routing.claim import batch_claim, subscription_read
from routing.models import Attempt, Delivery
from routing.pump import _batch_close, deliveries_pump
from routing.send import batch_send
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply

pytestmark = pytest.mark.django_db


def order(sub, number: str, seqs: range) -> list[Delivery]:
    return [
        DeliveryFactory(
            subscription=sub,
            event=EventFactory(payload={"order": {"number": number, "seq": n}}, resource_key=f"order:{number}"),
        )
        for n in seqs
    ]


def seqs(subscriber, path: str) -> list[int]:
    return [r.json()["payload"]["order"]["seq"] for r in subscriber.received(path)]


def attempts_counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("hub_delivery_attempts_total", {"outcome": outcome}) or 0.0


def states(deliveries: list[Delivery]) -> list[tuple[str, int, int | None]]:
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    by_id = {pk: rest for pk, *rest in rows.values_list("pk", "state", "attempt_count", "claim")}
    return [tuple(by_id[d.pk]) for d in deliveries]


def test_a_failure_in_a_run_sends_nothing_after_it_for_its_order_and_the_rest_go_back_unsent(subscriber):
    sub = SubscriptionFactory(url=subscriber.url("/erp"), retry_schedule=[3600])
    a = order(sub, "RA", range(1, 6))
    b = order(sub, "RB", range(11, 14))
    # Sent A1 B1 A2 B2 A3 B3 A4 A5 (each order's first, then each one's second...): A2 fails.
    subscriber.program("/erp", Reply.ok(), Reply.ok(), Reply.error(500), Reply.ok())
    batch = batch_claim(sub=subscription_read(sub.pk), budget=5)
    assert batch is not None and len(batch.deliveries) == 8

    attempts_before = {o: attempts_counted(o) for o in ("success", "http_error")}
    sent, unsent = batch_send(batch, deadline=time.monotonic() + 60)
    assert [s.delivery.pk for s in sent] == [a[0].pk, b[0].pk, a[1].pk, b[1].pk, b[2].pk]
    # Each request made is counted once the batch is sent, none of those held back.
    assert {o: attempts_counted(o) - n for o, n in attempts_before.items()} == {"success": 4, "http_error": 1}
    assert [d.pk for d in unsent] == [d.pk for d in a[2:]]
    assert seqs(subscriber, "/erp") == [1, 11, 2, 12, 13]

    verdicts = _batch_close(batch, sent=sent, unsent=unsent)
    assert verdicts == {a[1].pk: "retry", **{d.pk: "delivered" for d in [a[0], *b]}}
    # Held back: pending as before the claim, no attempt spent or recorded.
    assert states(a[2:]) == [("pending", 0, None)] * 3
    assert not Attempt.objects.filter(delivery__in=a[2:]).exists()
    assert states(a[1:2]) == [("retrying", 1, None)]


def test_the_pump_does_not_hand_on_for_what_a_failure_held_back_and_the_retry_takes_the_run_in_order(subscriber):
    sub = SubscriptionFactory(url=subscriber.url("/erp"), retry_schedule=[3600])
    a = order(sub, "RA", range(1, 6))
    b = order(sub, "RB", range(11, 13))
    subscriber.program("/erp", Reply.ok(), Reply.ok(), Reply.error(500), Reply.ok())
    result = deliveries_pump(subscription_id=sub.pk)
    assert not result.handed_on
    assert result.verdicts == {a[0].pk: "delivered", b[0].pk: "delivered", a[1].pk: "retry", b[1].pk: "delivered"}
    assert seqs(subscriber, "/erp") == [1, 11, 2, 12]
    # Nothing of order A is sendable until its failed delivery's retry is due.
    assert deliveries_pump(subscription_id=sub.pk).verdicts == {}

    Delivery.objects.filter(pk=a[1].pk).update(next_attempt_at=timezone.now())
    result = deliveries_pump(subscription_id=sub.pk)
    assert result.verdicts == {d.pk: "delivered" for d in a[1:]}
    assert seqs(subscriber, "/erp") == [1, 11, 2, 12, 2, 3, 4, 5]
    assert [row[1] for row in states(a)] == [1, 2, 1, 1, 1]


def test_a_delivery_without_a_resource_key_holds_back_nothing(subscriber):
    sub = SubscriptionFactory(url=subscriber.url("/amazon"), retry_schedule=[3600])
    subscriber.program("/amazon", Reply.error(500), Reply.ok())
    first, second = (
        DeliveryFactory(subscription=sub, event=EventFactory(payload={"order": {"seq": n}}, resource_key=None))
        for n in (1, 2)
    )
    assert deliveries_pump(subscription_id=sub.pk).verdicts == {first.pk: "retry", second.pk: "delivered"}


def test_a_batch_full_of_one_orders_run_wakes_no_helper_that_would_find_nothing(subscriber, settings, monkeypatch):
    """Another pump helps with other resources only, and a batch with room for a run took every
    one whose turn had come; a batch full of resources still asks for one."""
    settings.HUB_DELIVERY_BATCH_SIZE = 4
    woken: list[list[int]] = []
    monkeypatch.setattr("routing.pump.pumps_enqueue", lambda ids, **kw: woken.append(list(ids)) or list(ids))
    sub = SubscriptionFactory(url=subscriber.url("/erp"), max_in_flight=2)
    chain = order(sub, "RA", range(10))
    result = deliveries_pump(subscription_id=sub.pk)
    assert result.verdicts == {d.pk: "delivered" for d in chain}
    assert seqs(subscriber, "/erp") == list(range(10))
    assert (result.helpers, woken) == (0, [])

    # Five orders' heads: a batch of four resources (a helper asked for), then one.
    for n in range(5):
        order(sub, f"R{n}", range(1))
    result = deliveries_pump(subscription_id=sub.pk)
    assert len(result.verdicts) == 5
    assert (result.helpers, woken) == (1, [[sub.pk]])
