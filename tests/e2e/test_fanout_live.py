"""An event routed to several endpoints, for real: POST /events -> one fan-out message -> a Celery
worker process -> HTTP to each endpoint at once -> outcomes and attempts; a failing endpoint among
them retried by its pump. No mocks; every wait has a deadline."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook

from events.models import Event
from routing.models import Attempt, Delivery
from tests.factories import SubscriptionFactory
from tests.live import Reply, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def push(api, body: dict) -> Event:
    response = api.post("/events", body, format="json")
    assert response.status_code == 202, response.content
    return Event.objects.get(uid=response.json()["event_id"])


def worker_lines(worker, since: int = 0) -> list[dict]:
    """The worker's JSON log lines from character `since` of its log on."""
    return [json.loads(raw) for raw in worker.log()[since:].splitlines() if raw[:1] == "{"]


def tasks_received(lines: list[dict], name: str) -> list[list]:
    """The arguments of each `name` task the worker took."""
    return [
        json.loads(line["data"]["args"])
        for line in lines
        if line.get("name") == "celery.worker.strategy" and (line.get("data") or {}).get("name") == name
    ]


def test_an_event_to_several_endpoints_is_sent_by_one_fan_out_task_once_each_signed(worker, subscriber, api):
    subs = [SubscriptionFactory(url=subscriber.url(f"/many/{n}"), message_types=["order:*"]) for n in range(5)]
    since = len(worker.log())
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "F1"}}})

    for n, sub in enumerate(subs):
        [request] = subscriber.wait_for(f"/many/{n}")
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = Webhook(sub.signing_secret).verify(request.body, headers)
        assert verified["message_id"] == event.message_id
        assert headers["webhook-id"] == str(event.uid)
    deliveries = {d.pk: d for d in Delivery.objects.filter(event=event)}
    wait_until(
        lambda: set(Delivery.objects.filter(event=event).values_list("state", flat=True)) == {"delivered"},
        30,
        message="every delivery delivered",
    )
    assert Attempt.objects.filter(delivery__event=event, succeeded=True).count() == 5

    # Every attempt was the fan-out's, all from one task.
    def attempt_lines() -> list[dict] | None:
        lines = [
            line
            for line in worker_lines(worker, since)
            if line.get("message") == "delivery attempt" and line.get("delivery_id") in deliveries
        ]
        return lines if len(lines) == 5 else None

    attempts = wait_until(attempt_lines, 10, message="the worker's lines of the attempts")
    assert all(line.get("fan_out") for line in attempts)
    assert sorted(line["delivery_id"] for line in attempts) == sorted(deliveries)
    # One task took them all, and no endpoint's pump was asked to look.
    lines = worker_lines(worker, since)
    assert tasks_received(lines, "routing.deliveries_fan_out") == [[sorted(deliveries), [s.pk for s in subs]]]
    assert tasks_received(lines, "routing.deliveries_pump") == []
    event.refresh_from_db()
    assert event.status == "delivered"
    assert all(len(subscriber.received(f"/many/{n}")) == 1 for n in range(5))


def test_a_failing_endpoint_among_them_is_retried_by_its_pump(worker, subscriber, api):
    subscriber.program("/some/flaky", Reply.error(500), Reply.ok())
    good = SubscriptionFactory(url=subscriber.url("/some/good"), message_types=["order:*"])
    flaky = SubscriptionFactory(url=subscriber.url("/some/flaky"), message_types=["order:*"], retry_schedule=[0.2])
    since = len(worker.log())
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "F2"}}})

    def delivered() -> bool:
        return set(Delivery.objects.filter(event=event).values_list("state", flat=True)) == {"delivered"}

    wait_until(delivered, 30, message="both delivered")
    assert len(subscriber.received("/some/good")) == 1
    flaky_delivery = Delivery.objects.get(event=event, subscription=flaky)
    attempts = list(flaky_delivery.attempts.order_by("number").values_list("number", "status_code"))
    assert attempts == [(1, 500), (2, 200)]
    assert Delivery.objects.get(event=event, subscription=good).attempts.count() == 1
    flaky.refresh_from_db()
    assert flaky.failing_since is None
    # The first attempts were the fan-out's, the retry the endpoint's pump's.
    lines = {
        (line["delivery_id"], line["attempt"]): line
        for line in worker_lines(worker, since)
        if line.get("message") == "delivery attempt"
    }
    good_delivery = Delivery.objects.get(event=event, subscription=good)
    assert lines[(good_delivery.pk, 1)].get("fan_out")
    assert lines[(flaky_delivery.pk, 1)].get("fan_out")
    assert lines[(flaky_delivery.pk, 2)]["name"] == "routing.pump"


def test_a_batch_of_few_events_for_many_endpoints_is_a_fan_out_per_event(worker, subscriber, api):
    subs = [SubscriptionFactory(url=subscriber.url(f"/batch/{n}"), message_types=["order:*"]) for n in range(5)]
    since = len(worker.log())
    response = api.post(
        "/events/batch",
        [{"message": "order:new", "payload": {"order": {"number": f"FB{n}"}}} for n in range(2)],
        format="json",
    )
    assert response.status_code == 200 and response.json()["accepted"] == 2, response.content
    events = list(Event.objects.filter(uid__in=[item["event_id"] for item in response.json()["results"]]))

    def delivered() -> bool:
        return set(Delivery.objects.filter(event__in=events).values_list("state", flat=True)) == {"delivered"}

    wait_until(delivered, 30, message="every delivery delivered")
    assert all(len(subscriber.received(f"/batch/{n}")) == 2 for n in range(5))
    assert Attempt.objects.filter(delivery__event__in=events).count() == 10
    # A task per event, naming its deliveries to the five endpoints. (The first to finish wakes
    # the other event's deliveries in a fan-out of its own if they are still due there, as a pump
    # claims again after its commit: either sends them, once.)
    lines = worker_lines(worker, since)
    expected = [
        [sorted(Delivery.objects.filter(event=event).values_list("pk", flat=True)), [s.pk for s in subs]]
        for event in events
    ]
    received = tasks_received(lines, "routing.deliveries_fan_out")
    assert all(message in received for message in expected)
    ours = {pk for message in expected for pk in message[0]}
    assert all(set(message[0]) <= ours for message in received)


def test_a_stream_to_endpoints_of_one_slot_each_arrives_once_and_in_order(worker, subscriber, api):
    """Pushes faster than their fan-outs end: the fan-outs overlap, one finds the endpoints' slot
    held by another and leaves its deliveries to that one, which wakes them once it is done."""
    for n in range(4):
        SubscriptionFactory(url=subscriber.url(f"/stream/{n}"), message_types=["order:*"], max_in_flight=1)
    events = [
        push(api, {"message": "order:updated", "payload": {"order": {"number": f"S{n % 3}", "seq": n}}})
        for n in range(24)
    ]

    def delivered() -> bool:
        return set(Delivery.objects.filter(event__in=events).values_list("state", flat=True)) == {"delivered"}

    wait_until(delivered, 60, message="every delivery of the stream delivered")
    for n in range(4):
        seqs = [r.json()["payload"]["order"]["seq"] for r in subscriber.received(f"/stream/{n}")]
        assert sorted(seqs) == list(range(24))
        for order in range(3):
            mine = [seq for seq in seqs if seq % 3 == order]
            assert mine == sorted(mine), f"order S{order} out of order at endpoint {n}: {mine}"
