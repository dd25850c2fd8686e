"""A pump for one delivery's endpoint (tests.live.pump_for: what the task runs) against the real
local subscriber, called directly (no broker)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from events.models import Event
from routing.models import Delivery, Notification
from routing.status import event_status_derive
from routing.subscriptions import subscriptions_enabled, subscriptions_for_event
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import Reply, pump_for

pytestmark = pytest.mark.django_db


def make(subscriber, path="/hook", **sub_kwargs) -> Delivery:
    sub = SubscriptionFactory(url=subscriber.url(path), **sub_kwargs)
    return DeliveryFactory(subscription=sub)


def due_now(delivery: Delivery) -> None:
    """The retry's wait is over (a pump sends a retry due at once in the same run)."""
    Delivery.objects.filter(pk=delivery.pk, state="retrying").update(next_attempt_at=timezone.now())


def test_delivered_once_and_a_second_call_sends_nothing(subscriber):
    delivery = make(subscriber)
    assert pump_for(delivery.pk) == "delivered"
    assert pump_for(delivery.pk) is None
    assert len(subscriber.received("/hook")) == 1
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempt_count, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None and delivery.lease_expires_at is None
    delivery.event.refresh_from_db()
    assert delivery.event.status == "delivered"


def test_not_due_or_held_by_another_worker_is_left_alone(subscriber):
    later = make(subscriber)
    Delivery.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=5))
    held = make(subscriber)
    Delivery.objects.filter(pk=held.pk).update(
        state="delivering", lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    assert pump_for(later.pk) is None
    assert pump_for(held.pk) is None
    assert pump_for(999999) is None
    assert subscriber.received() == []


def test_disabled_subscription_is_not_sent_to(subscriber):
    delivery = make(subscriber, is_enabled=False)
    assert pump_for(delivery.pk) is None
    assert subscriber.received() == []


def test_failure_schedules_the_next_try_from_the_subscription_schedule(subscriber, settings):
    settings.HUB_RETRY_JITTER = 0
    subscriber.program("/hook", Reply.error(500))
    delivery = make(subscriber, retry_schedule=[30, 60])
    before = timezone.now()
    assert pump_for(delivery.pk) == "retry"
    delivery.refresh_from_db()
    assert delivery.state == "retrying" and delivery.last_error == "HTTP 500"
    assert before + timedelta(seconds=30) <= delivery.next_attempt_at <= timezone.now() + timedelta(seconds=30)
    attempt = delivery.attempts.get()
    assert (attempt.number, attempt.status_code, attempt.succeeded, attempt.response_body) == (
        1,
        500,
        False,
        '{"error": "boom"}',
    )
    delivery.event.refresh_from_db()
    assert delivery.event.status == "delivering"


def test_after_the_last_retry_the_delivery_fails(subscriber):
    subscriber.program("/hook", Reply.error(503))
    delivery = make(subscriber, retry_schedule=[60, 60])
    verdicts = []
    for _ in range(4):
        verdicts.append(pump_for(delivery.pk))
        due_now(delivery)
    assert verdicts == ["retry", "retry", "failed", None]
    delivery.refresh_from_db()
    assert delivery.state == "failed" and delivery.attempts.count() == 3
    delivery.event.refresh_from_db()
    assert delivery.event.status == "failed"


def test_retries_turned_off_fail_after_one_attempt(subscriber):
    subscriber.program("/hook", Reply.error(500))
    delivery = make(subscriber, retry_enabled=False)
    assert pump_for(delivery.pk) == "failed"


def test_retry_after_on_429_is_honoured(subscriber, settings):
    settings.HUB_RETRY_JITTER = 0
    subscriber.program("/hook", Reply.too_many("120"))
    delivery = make(subscriber, retry_schedule=[1])
    before = timezone.now()
    pump_for(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.next_attempt_at >= before + timedelta(seconds=120)
    assert delivery.attempts.get().response_headers["retry-after"] == "120"


def test_2xx_that_is_not_json_is_retried(subscriber):
    subscriber.program("/hook", Reply.not_json(), Reply.ok())
    delivery = make(subscriber, retry_schedule=[60])
    assert pump_for(delivery.pk) == "retry"
    due_now(delivery)
    assert pump_for(delivery.pk) == "delivered"
    assert [a.succeeded for a in delivery.attempts.order_by("number")] == [False, True]


def test_gone_disables_the_subscription_and_says_so(subscriber):
    subscriber.program("/hook", Reply.gone())
    delivery = make(subscriber, retry_schedule=[0, 0])
    other = DeliveryFactory(subscription=delivery.subscription)
    assert pump_for(delivery.pk) == "gone"
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    sub = delivery.subscription
    sub.refresh_from_db()
    assert not sub.is_enabled
    note = Notification.objects.get(subscription=sub)
    assert note.level == "error" and "410" in note.description
    assert pump_for(other.pk) is None  # nothing more goes to a disabled endpoint


def test_endpoint_failing_for_too_long_is_disabled(subscriber, settings):
    settings.HUB_SUBSCRIPTION_DISABLE_AFTER_SECONDS = 3600
    subscriber.program("/hook", Reply.error(500))
    delivery = make(subscriber, retry_schedule=[0])
    type(delivery.subscription).objects.filter(pk=delivery.subscription_id).update(
        failing_since=timezone.now() - timedelta(hours=2)
    )
    pump_for(delivery.pk)
    delivery.subscription.refresh_from_db()
    assert not delivery.subscription.is_enabled
    assert "failed every attempt since" in delivery.subscription.disabled_reason


def test_success_clears_the_failing_clock(subscriber):
    delivery = make(subscriber)
    type(delivery.subscription).objects.filter(pk=delivery.subscription_id).update(failing_since=timezone.now())
    pump_for(delivery.pk)
    delivery.subscription.refresh_from_db()
    assert delivery.subscription.failing_since is None


def test_reply_notifications_are_stored_with_the_resource_key(subscriber):
    subscriber.program(
        "/hook",
        Reply.ok(
            notifications=[
                {"level": "error", "subject": "Customer unknown", "description": "no such email"},
                {"level": "warning", "subject": "Slow"},
                {"level": "shout", "subject": ""},
                "not an object",
            ]
        ),
    )
    delivery = make(subscriber)
    assert pump_for(delivery.pk) == "delivered"  # a business error is still a delivery
    notes = list(Notification.objects.filter(event=delivery.event).order_by("id"))
    assert [(n.level, n.subject) for n in notes] == [
        ("error", "Customer unknown"),
        ("warn", "Slow"),
        ("info", "(no subject)"),
    ]
    assert {n.resource_key for n in notes} == {"order:R1"}
    assert notes[0].delivery_id == delivery.pk and notes[0].subscription_id == delivery.subscription_id


def test_reply_messages_become_child_events_and_bad_ones_are_noted(subscriber):
    subscriber.program(
        "/hook",
        Reply.ok(
            messages=[{"message": "shipment:confirm", "payload": {"shipment": {"number": "H1"}}}, {"payload": {}}]
        ),
    )
    downstream = SubscriptionFactory(url=subscriber.url("/down"), message_types=["shipment:confirm"])
    delivery = make(subscriber, message_types=["order:new"])
    pump_for(delivery.pk)
    child = Event.objects.get(parent=delivery.event)
    assert (child.message, child.depth, child.store_id, child.source) == ("shipment:confirm", 1, None, "reply")
    assert Delivery.objects.filter(event=child, subscription=downstream).exists()
    note = Notification.objects.get(event=delivery.event)
    assert note.level == "warn" and "'message' is required" in note.description


def test_reply_messages_past_the_depth_limit_are_not_routed(subscriber, settings):
    settings.HUB_MAX_EVENT_DEPTH = 2
    subscriber.program("/hook", Reply.ok(messages=[{"message": "order:new", "payload": {}}]))
    sub = SubscriptionFactory(url=subscriber.url("/hook"))
    deep = EventFactory(depth=2)
    delivery = DeliveryFactory(event=deep, subscription=sub)
    assert pump_for(delivery.pk) == "delivered"
    assert not Event.objects.filter(parent=deep).exists()
    assert "not routed" in Notification.objects.get(event=deep).subject


def test_reply_parameters_are_merged_into_the_subscription_and_sent_next_time(subscriber):
    subscriber.program("/hook", Reply.ok(parameters=[{"name": "cursor", "value": "2"}, {"name": "new", "value": 1}]))
    delivery = make(subscriber, parameters=[{"name": "cursor", "value": "1"}, {"name": "key", "value": "k"}])
    pump_for(delivery.pk)
    sub = delivery.subscription
    sub.refresh_from_db()
    assert sub.parameters == [
        {"name": "cursor", "value": "2"},
        {"name": "key", "value": "k"},
        {"name": "new", "value": 1},
    ]
    following = DeliveryFactory(subscription=sub)
    pump_for(following.pk)
    assert subscriber.received("/hook")[-1].json()["payload"]["parameters"] == sub.parameters


def test_method_override_and_x_hub_store(subscriber):
    delivery = make(subscriber, http_method="PUT")
    pump_for(delivery.pk)
    [request] = subscriber.received("/hook")
    assert request.method == "PUT"
    assert request.headers["X-Hub-Store"] == delivery.event.store.name


def test_routing_skips_a_stores_own_subscription_unless_it_asks(store):
    own = SubscriptionFactory(store=store)
    asks = SubscriptionFactory(store=store, receive_own_events=True)
    other = SubscriptionFactory()
    filtered_out = SubscriptionFactory(filters=[{"path": "order.channel", "op": "eq", "value": "amazon"}])
    event = EventFactory(store=store, payload={"order": {"number": "R1", "channel": "spree"}})
    routed = {s.pk for s in subscriptions_for_event(event=event, subscriptions=subscriptions_enabled())}
    assert routed == {asks.pk, other.pk}
    assert own.pk not in routed and filtered_out.pk not in routed


@pytest.mark.parametrize(
    ("rows", "status"),
    [
        ([], "unrouted"),
        ([(1, 1, "pending", 0), (2, 2, "pending", 0)], "queued"),
        ([(1, 1, "delivered", 1), (2, 2, "pending", 0)], "delivering"),
        ([(1, 1, "retrying", 1)], "delivering"),
        ([(1, 1, "delivered", 1), (2, 2, "delivered", 3)], "delivered"),
        ([(1, 1, "delivered", 1), (2, 2, "failed", 3)], "partially_failed"),
        ([(1, 1, "failed", 1), (2, 2, "failed", 3)], "failed"),
        ([(1, 1, "failed", 3), (1, 5, "delivered", 1)], "delivered"),  # a replay supersedes what it replays
        ([(1, 1, "delivered", 1), (2, 2, "cancelled", 0)], "delivered"),
        ([(1, 1, "cancelled", 0)], "failed"),
    ],
)
def test_event_status_derivation(rows, status):
    assert event_status_derive(rows) == status


def test_reply_fields_that_are_not_arrays_are_noted_not_dropped_silently(subscriber):
    subscriber.program(
        "/hook",
        Reply.ok(
            notifications={"level": "error", "subject": "Customer unknown"},
            messages="shipment:confirm",
            parameters="cursor=2",
        ),
    )
    delivery = make(subscriber, parameters=[{"name": "cursor", "value": "1"}])
    assert pump_for(delivery.pk) == "delivered"
    notes = {n.subject: (n.level, n.description) for n in Notification.objects.filter(event=delivery.event)}
    assert notes == {
        f"The reply's '{key}' was not read": ("warn", f"'{key}' must be {wanted} (PROTOCOL §3), not {kind}.")
        for key, wanted, kind in (
            ("notifications", "a JSON array", "an object"),
            ("messages", "a JSON array", "a string"),
            ("parameters", "a JSON array or object", "a string"),
        )
    }
    assert not Event.objects.filter(parent=delivery.event).exists()
    delivery.subscription.refresh_from_db()
    assert delivery.subscription.parameters == [{"name": "cursor", "value": "1"}]


def test_parameters_as_an_object_are_merged_and_one_without_its_brackets_is_one_parameter(subscriber):
    """The newer generation's object form (names to values); an object of just name and value,
    which the object form read that way before, is the list form's one item without brackets."""
    subscriber.program(
        "/hook", Reply.ok(parameters={"name": "cursor", "value": "2"}), Reply.ok(parameters={"cursor": "3", "page": 4})
    )
    delivery = make(subscriber, parameters=[{"name": "cursor", "value": "1"}])
    assert pump_for(delivery.pk) == "delivered"
    delivery.subscription.refresh_from_db()
    assert delivery.subscription.parameters == [{"name": "cursor", "value": "2"}]
    second = DeliveryFactory(subscription=delivery.subscription)
    assert pump_for(second.pk) == "delivered"
    delivery.subscription.refresh_from_db()
    assert delivery.subscription.parameters == [{"name": "cursor", "value": "3"}, {"name": "page", "value": 4}]
    assert not Notification.objects.exists()
