"""PROTOCOL §4, retries, order, and what is never lost, with the real worker and subscriber."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from events.models import Event
from routing.models import Delivery
from routing.operations import delivery_retry_now
from tests.factories import SubscriptionFactory
from tests.live import Reply, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def wait_state(delivery: Delivery, state: str, timeout: float = 30) -> Delivery:
    def reached() -> Delivery | None:
        delivery.refresh_from_db()
        return delivery if delivery.state == state else None

    return wait_until(reached, timeout, message=f"delivery {delivery.pk} {state}")


@pytest.fixture
def broker_down() -> Iterator[None]:
    """This process's broker is a real URL with nothing listening (not a mock): publishing fails
    the way it does when Redis is down. The worker keeps its own broker, as a worker on another
    machine would."""
    from integrator.celery import app

    def forget_connections() -> None:
        # Celery caches its connection and producer pools per URL; drop them so the URL applies.
        app._pool = None
        app.amqp._producer_pool = None

    saved = app.conf.broker_url
    app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"
    forget_connections()
    try:
        yield
    finally:
        app.conf.broker_url = saved
        forget_connections()


def test_a_push_while_the_broker_is_down_is_accepted_and_delivered_once_it_is_back(
    worker, subscriber, api, broker_down
):
    sub = SubscriptionFactory(url=subscriber.url("/later"), message_types=["order:*"])
    response = api.post("/events", {"message": "order:new", "payload": {"order": {"number": "R40"}}}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    event = Event.objects.get(uid=response.json()["event_id"])
    delivery = Delivery.objects.get(event=event, subscription=sub)
    # Durable, and in no broker: the sweeper owns it now.
    assert delivery.state == "pending"

    # The worker's beat-driven sweeper finds it in the database and it goes out.
    wait_state(delivery, "delivered")
    [request] = subscriber.received("/later")
    assert request.headers["webhook-id"] == str(event.uid)


def test_a_retrying_delivery_holds_back_only_its_own_resources_later_deliveries(worker, subscriber, api):
    subscriber.program("/ordered", Reply.error(500), Reply.ok())
    sub = SubscriptionFactory(url=subscriber.url("/ordered"), message_types=["order:*"], retry_schedule=[3600])

    def push(message: str, number: str) -> Delivery:
        body = {"message": message, "payload": {"order": {"number": number}}}
        response = api.post("/events", body, format="json")
        assert response.status_code == 202, response.content
        return Delivery.objects.get(event__uid=response.json()["event_id"], subscription=sub)

    first = push("order:new", "R1")
    wait_state(first, "retrying")  # its first try failed; the next is an hour away
    second = push("order:updated", "R1")
    other = push("order:new", "R2")

    # Another order is not held back by R1's trouble...
    wait_state(other, "delivered")
    # ...but R1's update must wait for R1's creation.
    numbers = [(r.json()["message"], r.json()["payload"]["order"]["number"]) for r in subscriber.received("/ordered")]
    assert ("order:updated", "R1") not in numbers
    second.refresh_from_db()
    assert second.state != "delivered"

    assert delivery_retry_now(delivery_id=first.pk)
    wait_state(first, "delivered")
    # However the held delivery is released (re-enqueued at once, or found by the sweeper), it goes.
    wait_state(second, "delivered", timeout=90)
    sent = [(r.json()["message"], r.json()["payload"]["order"]["number"]) for r in subscriber.received("/ordered")]
    r1 = [message for message, number in sent if number == "R1"]
    assert r1 == ["order:new", "order:new", "order:updated"]
