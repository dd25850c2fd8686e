"""PROTOCOL §3, what an endpoint replies: a JSON body on a 2xx is success, and its notifications,
messages and parameters are taken in. Real HTTP to the local subscriber; the pump is called
directly (tests/e2e/ runs the same path through the worker).
"""

from __future__ import annotations

import json

import pytest

from events.models import Event
from routing.models import Delivery, Notification
from tests.factories import DeliveryFactory, SubscriptionFactory
from tests.live import Reply, pump_for, wait_until

pytestmark = pytest.mark.django_db

NOTE = {"level": "error", "subject": "Commande refusée", "description": "Client inconnu: müller@exemple.fr"}


def attempt_with_reply(subscriber, reply: Reply, path: str = "/endpoint") -> Delivery:
    subscriber.program(path, reply)
    delivery = DeliveryFactory(subscription=SubscriptionFactory(url=subscriber.url(path)))
    pump_for(delivery.pk)
    delivery.refresh_from_db()
    return delivery


@pytest.mark.parametrize("content_type", ["text/plain", "text/html", "application/octet-stream"])
def test_a_utf8_json_reply_under_another_media_type_keeps_its_accents(subscriber, content_type):
    """JSON is UTF-8; an endpoint that labels it text/plain without a charset must not have its
    notification garbled (requests alone would read it as ISO-8859-1)."""
    body = json.dumps({"notifications": [NOTE]}, ensure_ascii=False).encode("utf-8")
    delivery = attempt_with_reply(subscriber, Reply(200, body=body, headers={"Content-Type": content_type}))
    assert delivery.state == "delivered"
    note = Notification.objects.get(delivery=delivery)
    assert (note.level, note.subject, note.description) == ("error", NOTE["subject"], NOTE["description"])
    assert "refusée" in delivery.attempts.get().response_body


def test_a_charset_the_endpoint_names_is_honoured(subscriber):
    body = json.dumps({"notifications": [NOTE]}, ensure_ascii=False).encode("latin-1")
    reply = Reply(200, body=body, headers={"Content-Type": "application/json; charset=iso-8859-1"})
    delivery = attempt_with_reply(subscriber, reply)
    assert Notification.objects.get(delivery=delivery).subject == NOTE["subject"]


def test_a_json_reply_with_a_byte_order_mark_is_a_json_reply(subscriber):
    body = b"\xef\xbb\xbf" + json.dumps({"notifications": [NOTE]}).encode()
    delivery = attempt_with_reply(subscriber, Reply(200, body=body, headers={"Content-Type": "application/json"}))
    assert delivery.state == "delivered", delivery.last_error
    assert Notification.objects.get(delivery=delivery).subject == NOTE["subject"]


@pytest.mark.parametrize("document", [b"null", b"[]", b'"ok"', b"true"])
def test_any_json_document_is_a_successful_reply(subscriber, document):
    """'must respond with a JSON response' (seeds/000): `null` is JSON too; only an object can
    carry notifications, messages or parameters, so the others are plain acknowledgements."""
    delivery = attempt_with_reply(subscriber, Reply(200, body=document))
    assert (delivery.state, delivery.last_error) == ("delivered", "")
    assert not Notification.objects.filter(delivery=delivery).exists()


def test_an_empty_2xx_body_is_still_not_json(subscriber):
    delivery = attempt_with_reply(subscriber, Reply(200, body=b""))
    assert delivery.state == "retrying"
    assert "not JSON" in delivery.last_error


def test_an_error_notification_on_a_2xx_is_delivered_and_shown_on_the_event(subscriber, api, store):
    """§3: an `error` notification on a 2xx is a business failure: the delivery is done (no retry
    would change the answer) and the store sees the notification on the event."""
    subscriber.program("/erp", Reply.ok(notifications=[NOTE]))
    SubscriptionFactory(url=subscriber.url("/erp"), message_types=["order:new"])
    pushed = api.post("/events", {"message": "order:new", "payload": {"order": {"number": "R9"}}}, format="json")
    [delivery] = Delivery.objects.filter(event__uid=pushed.json()["event_id"])
    assert pump_for(delivery.pk) == "delivered"

    body = api.get(f"/events/{pushed.json()['event_id']}").json()
    assert body["status"] == "delivered"
    [note] = body["notifications"]
    assert (note["level"], note["subject"], note["description"]) == ("error", NOTE["subject"], NOTE["description"])


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_returned_message_is_not_sent_back_to_the_endpoint_that_returned_it(worker, subscriber, api):
    """The endpoint-side twin of 'an event pushed by a store is not sent back to that store': an
    ERP subscribed to everything that answers order:new with shipment:confirm must not receive its
    own shipment:confirm (and answer it again, and again, down to the depth limit)."""
    subscriber.program(
        "/erp", Reply.ok(messages=[{"message": "shipment:confirm", "payload": {"shipment": {"number": "H9"}}}])
    )
    erp = SubscriptionFactory(url=subscriber.url("/erp"), message_types=["*"])
    shipping = SubscriptionFactory(url=subscriber.url("/shipping"), message_types=["shipment:*"])
    pushed = api.post("/events", {"message": "order:new", "payload": {"order": {"number": "R10"}}}, format="json")
    assert pushed.status_code == 202
    parent = Event.objects.get(uid=pushed.json()["event_id"])

    [onward] = subscriber.wait_for("/shipping")
    assert onward.json()["message"] == "shipment:confirm"
    child = Event.objects.get(parent=parent)
    # The child's deliveries were made with it, in one transaction: none of them is to the ERP.
    assert list(Delivery.objects.filter(event=child).values_list("subscription_id", flat=True)) == [shipping.pk]
    wait_until(lambda: Delivery.objects.get(event=child).state == "delivered", message="child delivered")
    assert [r.json()["message"] for r in subscriber.received("/erp")] == ["order:new"]
    assert Event.objects.filter(parent=child).count() == 0
    assert erp.pk != shipping.pk


@pytest.mark.django_db
def test_an_endpoint_that_asks_receives_the_messages_it_returned(subscriber):
    from events.validation import Envelope
    from routing.outbox import event_accept

    erp = SubscriptionFactory(url=subscriber.url("/erp"), message_types=["*"], receive_own_events=True)
    parent = DeliveryFactory(subscription=erp).event
    child = event_accept(
        store=None,
        envelope=Envelope(message="shipment:confirm", message_id=None, payload={"shipment": {"number": "H1"}}),
        parent=parent,
        origin=f"subscription:{erp.pk}",
    ).event
    assert list(Delivery.objects.filter(event=child).values_list("subscription_id", flat=True)) == [erp.pk]


@pytest.mark.parametrize(
    ("reply", "state"),
    [
        (Reply(200, body=b'{"ok": true}\x00'), "retrying"),  # not JSON: a failed attempt, recorded
        (Reply(500, body=b"\xff\xfeo\x00o\x00p\x00s\x00"), "retrying"),  # UTF-16 junk on an error
        (Reply(200, body=b'{"ok": true}'), "delivered"),
    ],
)
def test_every_attempt_is_recorded_even_when_the_reply_body_holds_nul(subscriber, reply, state):
    """§3: the hub records every attempt's body, though PostgreSQL cannot store NUL."""
    delivery = attempt_with_reply(subscriber, reply)
    assert delivery.state == state
    attempt = delivery.attempts.get()
    assert "\x00" not in attempt.response_body
    assert attempt.status_code == reply.status


def test_a_reply_whose_fields_hold_nul_is_taken_in_with_the_nul_marked(subscriber):
    reply = Reply.ok(
        notifications=[{"level": "warn", "subject": "bad\u0000byte", "description": "x\u0000"}],
        parameters=[{"name": "cursor\u0000", "value": "a\u0000b"}],
    )
    delivery = attempt_with_reply(subscriber, reply)
    assert delivery.state == "delivered", delivery.last_error
    note = Notification.objects.get(delivery=delivery)
    assert (note.subject, note.description) == ("bad\ufffdbyte", "x\ufffd")
    delivery.subscription.refresh_from_db()
    assert delivery.subscription.parameters == [{"name": "cursor\ufffd", "value": "a\ufffdb"}]


def test_a_reply_nested_too_deep_to_parse_is_a_recorded_failed_attempt(subscriber):
    """json.loads raises RecursionError (not ValueError) past ~1000 levels; that crashed the attempt."""
    depth = 100_000
    delivery = attempt_with_reply(subscriber, Reply(200, body=b"[" * depth + b"]" * depth))
    assert delivery.state == "retrying"
    assert "nested too deep" in delivery.last_error
    assert delivery.attempts.get().status_code == 200


def test_a_reply_with_a_lone_surrogate_escape_is_taken_in_with_it_marked(subscriber):
    """Python's json reads '\\ud800' into a str no database can encode as UTF-8."""
    body = b'{"notifications": [{"level": "info", "subject": "half \\ud83d of an emoji"}]}'
    delivery = attempt_with_reply(subscriber, Reply(200, body=body))
    assert delivery.state == "delivered", delivery.last_error
    assert Notification.objects.get(delivery=delivery).subject == "half \ufffd of an emoji"


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_reply_with_nan_or_infinity_is_not_json_and_is_recorded(subscriber, constant):
    """RFC 8259 has no NaN or Infinity; Python's json reads them, PostgreSQL's jsonb refuses them,
    and the attempt crashed while saving the returned parameters."""
    body = b'{"parameters": [{"name": "rate", "value": ' + constant + b"}]}"
    delivery = attempt_with_reply(subscriber, Reply(200, body=body))
    assert delivery.state == "retrying"
    assert "not JSON" in delivery.last_error
    assert delivery.attempts.get().response_body == body.decode()
    delivery.subscription.refresh_from_db()
    assert delivery.subscription.parameters == []
