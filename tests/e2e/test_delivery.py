"""The whole path, for real: POST /events -> database -> broker -> Celery worker process -> HTTP
to a local subscriber -> attempts, retries, replies. No mocks; every wait has a deadline."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from events.models import Event
from routing import operations
from routing.models import Attempt, Delivery, Notification, Subscription
from tests.factories import SubscriptionFactory
from tests.live import Reply, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ORDER_NEW = json.loads((Path(__file__).parent.parent / "fixtures" / "order_new.json").read_text())


def push(api, body: dict) -> Event:
    response = api.post("/events", body, format="json")
    assert response.status_code == 202, response.content
    return Event.objects.get(uid=response.json()["event_id"])


def delivery_of(event: Event, subscription: Subscription) -> Delivery:
    return Delivery.objects.get(event=event, subscription=subscription, replay_of__isnull=True)


def wait_state(delivery: Delivery, state: str, timeout: float = 30) -> Delivery:
    def reached() -> Delivery | None:
        delivery.refresh_from_db()
        return delivery if delivery.state == state else None

    return wait_until(reached, timeout, message=f"delivery {delivery.pk} {state} (is {delivery.state})")


def wait_event_status(event: Event, status: str, timeout: float = 30) -> None:
    def reached() -> bool:
        event.refresh_from_db()
        return event.status == status

    wait_until(reached, timeout, message=f"event {event.pk} {status}")


def test_seed_order_new_is_posted_signed_and_recorded(worker, subscriber, api):
    sub = SubscriptionFactory(
        url=subscriber.url("/erp"), message_types=["order:*"], parameters=[{"name": "api_key", "value": "k1"}]
    )
    event = push(api, ORDER_NEW)

    [request] = subscriber.wait_for("/erp")
    assert request.method == "POST"
    headers = {k.lower(): v for k, v in request.headers.items()}
    # Any Standard Webhooks verifier accepts it: signature, id and timestamp.
    verified = Webhook(sub.signing_secret).verify(request.body, headers)
    assert verified["message"] == "order:new"
    assert verified["message_id"] == event.message_id
    assert verified["payload"]["order"] == ORDER_NEW["payload"]["order"]
    assert verified["payload"]["parameters"] == [{"name": "api_key", "value": "k1"}]
    assert headers["webhook-id"] == str(event.uid)
    assert headers["x-hub-token"] == headers["x-augury-token"] == sub.token
    assert headers["x-hub-store"] == event.store.name
    assert headers["content-type"] == "application/json"

    delivery = wait_state(delivery_of(event, sub), "delivered")
    wait_event_status(event, "delivered")
    [attempt] = delivery.attempts.all()
    assert (attempt.status_code, attempt.succeeded, attempt.request_method) == (200, True, "POST")


def test_order_updated_is_put(worker, subscriber, api):
    sub = SubscriptionFactory(url=subscriber.url("/updates"), message_types=["order:updated"])
    event = push(api, {"message": "order:update", "payload": {"order": {"number": "R1", "status": "x"}}})
    [request] = subscriber.wait_for("/updates")
    assert request.method == "PUT"
    assert request.json()["message"] == "order:updated"
    wait_state(delivery_of(event, sub), "delivered")


def test_500_then_200_records_two_attempts_and_delivers(worker, subscriber, api):
    subscriber.program("/flaky", Reply.error(500), Reply.ok())
    sub = SubscriptionFactory(url=subscriber.url("/flaky"), retry_schedule=[0.2, 0.2])
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "R2"}}})

    delivery = wait_state(delivery_of(event, sub), "delivered")
    attempts = list(delivery.attempts.order_by("number"))
    assert [(a.number, a.status_code, a.succeeded) for a in attempts] == [(1, 500, False), (2, 200, True)]
    assert attempts[0].error == "HTTP 500"
    # Retries keep the same webhook-id so the receiver can dedup.
    ids = {r.headers["webhook-id"] for r in subscriber.received("/flaky")}
    assert ids == {str(event.uid)}
    wait_event_status(event, "delivered")


def test_timeout_is_a_failed_attempt_then_retried(worker, subscriber, api):
    subscriber.program("/slow", Reply.slow(5), Reply.ok())
    sub = SubscriptionFactory(url=subscriber.url("/slow"), timeout_seconds=0.5, retry_schedule=[0.2])
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "R3"}}})

    delivery = wait_state(delivery_of(event, sub), "delivered")
    first, second = delivery.attempts.order_by("number")
    assert first.status_code is None and not first.succeeded
    assert "timed out" in first.error
    assert second.succeeded


def test_connection_refused_is_recorded_retried_then_failed(worker, api):
    sub = SubscriptionFactory(url=f"http://127.0.0.1:{free_port()}/nobody", retry_schedule=[0.1, 0.1])
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "R4"}}})

    delivery = wait_state(delivery_of(event, sub), "failed")
    attempts = list(delivery.attempts.order_by("number"))
    assert [a.number for a in attempts] == [1, 2, 3]
    assert all(a.status_code is None and "connection failed" in a.error for a in attempts)
    wait_event_status(event, "failed")


def test_reply_notifications_parameters_and_onward_messages(worker, subscriber, api):
    subscriber.program(
        "/erp",
        Reply.ok(
            message_id="ack",
            notifications=[{"level": "info", "subject": "Order imported", "description": "as SO-1"}],
            parameters=[{"name": "last_sync", "value": "2026-01-01"}],
            messages=[{"message": "shipment:confirm", "payload": {"shipment": {"number": "H1", "order": "R5"}}}],
        ),
    )
    erp = SubscriptionFactory(url=subscriber.url("/erp"), message_types=["order:new"])
    shipping = SubscriptionFactory(url=subscriber.url("/shipping"), message_types=["shipment:*"])
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "R5"}}})

    [onward] = subscriber.wait_for("/shipping")
    assert onward.json()["message"] == "shipment:confirm"
    assert onward.json()["payload"]["shipment"] == {"number": "H1", "order": "R5"}
    child = Event.objects.get(parent=event)
    assert (child.message, child.depth, child.origin) == ("shipment:confirm", 1, f"subscription:{erp.pk}")
    wait_state(delivery_of(child, shipping), "delivered")

    note = Notification.objects.get(event=event)
    assert (note.level, note.subject, note.resource_key) == ("info", "Order imported", "order:R5")
    erp.refresh_from_db()
    assert erp.parameters == [{"name": "last_sync", "value": "2026-01-01"}]


def test_event_nobody_subscribes_to_is_unrouted(worker, subscriber, api):
    SubscriptionFactory(url=subscriber.url("/orders"), message_types=["order:*"])
    event = push(api, {"message": "stock:change", "payload": {"sku": "X"}})
    assert event.status == "unrouted"
    assert not Delivery.objects.filter(event=event).exists()


def test_filter_that_does_not_match_sends_nothing(worker, subscriber, api):
    SubscriptionFactory(
        url=subscriber.url("/eu"),
        message_types=["order:new"],
        filters=[{"path": "order.currency", "op": "eq", "value": "EUR"}],
    )
    wanted = SubscriptionFactory(
        url=subscriber.url("/usd"),
        message_types=["order:new"],
        filters=[{"path": "order.totals.order", "op": "gt", "value": 100}],
    )
    event = push(api, ORDER_NEW)
    delivery = wait_state(delivery_of(event, wanted), "delivered")
    assert Delivery.objects.filter(event=event).count() == 1
    assert delivery.subscription_id == wanted.pk
    assert subscriber.received("/eu") == []


def test_delivery_never_enqueued_is_delivered_by_the_sweeper(worker, subscriber, store):
    """The broker never hears of this delivery (created as if the publish after commit was lost a
    minute ago): the beat-driven sweeper finds it in the database and it is delivered anyway."""
    from events.services import event_build, event_insert
    from events.validation import envelope_validate

    sub = SubscriptionFactory(url=subscriber.url("/swept"))
    envelope = envelope_validate({"message": "order:new", "payload": {"order": {"number": "R6"}}})
    event = event_insert(event_build(store=store, envelope=envelope)).event
    due = timezone.now() - timedelta(minutes=1)
    delivery = Delivery.objects.create(event=event, subscription=sub, next_attempt_at=due)

    delivery = wait_state(delivery, "delivered")
    assert len(subscriber.received("/swept")) == 1
    assert Attempt.objects.filter(delivery=delivery, succeeded=True).count() == 1
    assert sub.pk == delivery.subscription_id


def test_gone_disables_the_subscription_with_a_notification(worker, subscriber, api):
    subscriber.program("/gone", Reply.gone())
    sub = SubscriptionFactory(url=subscriber.url("/gone"), retry_schedule=[0.1, 0.1])
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "R7"}}})
    delivery = wait_state(delivery_of(event, sub), "failed")
    assert delivery.attempts.count() == 1
    sub.refresh_from_db()
    assert not sub.is_enabled and "410" in sub.disabled_reason
    assert Notification.objects.filter(subscription=sub, level="error", subject="Subscription disabled").exists()


def test_replay_and_send_test_go_out_through_the_worker(worker, subscriber, api):
    sub = SubscriptionFactory(url=subscriber.url("/replay"))
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "R8"}}})
    original = wait_state(delivery_of(event, sub), "delivered")

    replay = operations.delivery_replay(delivery_id=original.pk)
    wait_state(replay, "delivered")
    assert len(subscriber.received("/replay")) == 2

    test_delivery = operations.subscription_send_test(subscription_id=sub.pk)
    wait_state(test_delivery, "delivered")
    assert subscriber.received("/replay")[-1].json()["message"] == "hub:test"


def test_the_workers_log_says_what_was_delivered_in_json_with_secrets_masked(worker, subscriber, api):
    token = "tok-" + "s3cr3t" * 4
    sub = SubscriptionFactory(url=subscriber.url("/logged"), message_types=["order:*"], token=token)
    event = push(api, {**ORDER_NEW, "message_id": "logged-1"})
    delivery = wait_state(delivery_of(event, sub), "delivered")

    def attempt_line() -> dict | None:
        for line in worker.log().splitlines():
            if line.startswith("{") and "delivery attempt" in line:
                record = json.loads(line)
                if record.get("delivery_id") == delivery.pk:
                    return record
        return None

    line = wait_until(attempt_line, 10, message="the worker logged the attempt")
    assert line["event_id"] == str(event.uid)
    assert (line["subscription"], line["subscription_id"]) == (sub.name, sub.pk)
    assert (line["attempt"], line["status_code"], line["verdict"]) == (1, 200, "delivered")
    assert line["destination_host"] == "127.0.0.1" and line["latency_ms"] >= 0
    assert line["levelname"] == "INFO" and line["name"] == "routing.pump"
    # Celery's own lines go through the same JSON handler, and no line carries the endpoint's token.
    assert any(
        json.loads(raw).get("name", "").startswith("celery") for raw in worker.log().splitlines() if raw[:1] == "{"
    )
    assert token not in worker.log()
