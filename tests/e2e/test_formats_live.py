"""Each payload format end to end: POST /events -> worker -> a local endpoint written from the
endpoint_base protocol, with the endpoint's own key, path routing and a JSONata mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from routing.models import Subscription
from tests.e2e.spree_endpoints import newer_endpoint, older_endpoint
from tests.e2e.test_delivery import delivery_of, push, wait_state
from tests.factories import SubscriptionFactory

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ORDER_NEW = json.loads((Path(__file__).parent.parent / "fixtures" / "order_new.json").read_text())
KEY = "abc123-endpoint-key"


def signed(sub: Subscription, request) -> object:
    return Webhook(sub.signing_secret).verify(request.body, {k.lower(): v for k, v in request.headers.items()})


def test_envelope_reaches_an_older_generation_endpoint_with_its_key(worker, subscriber, api):
    subscriber.respond_with("/legacy", older_endpoint(key=KEY))
    sub = SubscriptionFactory(
        url=subscriber.url("/legacy"),
        message_types=["order:*"],
        token=KEY,
        http_method="POST",
        parameters=[{"name": "store_id", "value": "42"}],
    )
    event = push(api, ORDER_NEW)

    [request] = subscriber.wait_for("/legacy")
    body = signed(sub, request)
    assert body["message_id"] == event.message_id
    assert body["payload"]["order"] == ORDER_NEW["payload"]["order"]
    assert body["payload"]["parameters"] == [{"name": "store_id", "value": "42"}]
    delivery = wait_state(delivery_of(event, sub), "delivered")
    [attempt] = delivery.attempts.all()
    assert json.loads(attempt.response_body) == {"message_id": event.message_id, "config": {"store_id": "42"}}


def test_flat_reaches_a_newer_generation_endpoint_at_its_route(worker, subscriber, api):
    subscriber.respond_with("/spree/add_order", newer_endpoint(key=KEY))
    sub = SubscriptionFactory(
        url=subscriber.url("/spree"),
        message_types=["order:*"],
        payload_format="flat",
        token=KEY,
        parameters=[{"name": "store_id", "value": "42"}],
    )
    event = push(api, ORDER_NEW)

    [request] = subscriber.wait_for("/spree/add_order")
    assert request.method == "POST"
    # The payload's other keys (this one's Spree `original`) ride along at the top, as endpoint_base
    # hands the endpoint the whole body.
    assert signed(sub, request) == {
        "request_id": event.message_id,
        "order": ORDER_NEW["payload"]["order"],
        "original": ORDER_NEW["payload"]["original"],
        "parameters": {"store_id": "42"},
    }
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["x-hub-token"] == KEY
    assert headers["x-hub-store"] == event.store.name
    delivery = wait_state(delivery_of(event, sub), "delivered")
    [attempt] = delivery.attempts.all()
    reply = json.loads(attempt.response_body)
    assert reply["request_id"] == event.message_id
    assert reply["summary"] == f"Order {ORDER_NEW['payload']['order']['number']} received"


def test_a_wrong_key_is_refused_by_the_endpoint_and_the_right_one_set_in_the_hub_works(worker, subscriber, api):
    subscriber.respond_with("/spree/add_order", newer_endpoint(key=KEY))
    sub = SubscriptionFactory(url=subscriber.url("/spree"), message_types=["order:*"], payload_format="flat")
    first = push(api, {"message": "order:new", "payload": {"order": {"number": "R100"}}})
    failed = wait_state(delivery_of(first, sub), "retrying")
    assert failed.last_status_code == 401

    from routing.endpoint_tokens import subscription_token_set

    subscription_token_set(subscription_id=sub.pk, token=KEY)
    second = push(api, {"message": "order:new", "payload": {"order": {"number": "R101"}}})
    wait_state(delivery_of(second, sub), "delivered")


def test_each_message_goes_to_its_own_path_in_order(worker, subscriber, api):
    subscriber.respond_with("/spree/add_order", newer_endpoint(key=KEY))
    subscriber.respond_with("/spree/update_order", newer_endpoint(key=KEY))
    sub = SubscriptionFactory(url=subscriber.url("/spree"), message_types=["order:*"], payload_format="flat", token=KEY)
    created = push(api, {"message": "order:new", "payload": {"order": {"number": "R7", "status": "complete"}}})
    updated = push(api, {"message": "order:updated", "payload": {"order": {"number": "R7", "status": "shipped"}}})

    wait_state(delivery_of(updated, sub), "delivered")
    wait_state(delivery_of(created, sub), "delivered")
    [add] = subscriber.received("/spree/add_order")
    [update] = subscriber.received("/spree/update_order")
    assert (add.method, update.method) == ("POST", "POST")
    assert add.json()["order"]["status"] == "complete"
    assert update.json()["order"]["status"] == "shipped"
    order = [r.path for r in subscriber.received() if r.path.startswith("/spree/")]
    assert order == ["/spree/add_order", "/spree/update_order"]


def test_paths_map_routes_an_envelope_subscription_too(worker, subscriber, api):
    sub = SubscriptionFactory(
        url=subscriber.url("/erp"),
        message_types=["order:*"],
        paths={"order:new": "/orders/create", "order:*": "/orders/{action}"},
    )
    created = push(api, {"message": "order:new", "payload": {"order": {"number": "R8"}}})
    canceled = push(api, {"message": "order:cancel", "payload": {"order": {"number": "R8"}}})
    wait_state(delivery_of(canceled, sub), "delivered")
    wait_state(delivery_of(created, sub), "delivered")
    [create] = subscriber.received("/erp/orders/create")
    [cancel] = subscriber.received("/erp/orders/canceled")
    assert (create.method, cancel.method) == ("POST", "PUT")
    assert cancel.json()["message"] == "order:canceled"


MAPPING = """{
  "OrderNumber": payload.order.number,
  "Customer": payload.order.billing_address.firstname & " " & payload.order.billing_address.lastname,
  "Lines": [payload.order.line_items.{"Sku": sku, "Qty": quantity, "Amount": price * quantity}],
  "Total": payload.order.totals.order,
  "Account": parameters.account,
  "Source": store & "/" & message
}"""


def test_transform_endpoint_receives_exactly_the_mapped_document(worker, subscriber, api):
    sub = SubscriptionFactory(
        url=subscriber.url("/service"),
        message_types=["order:new"],
        payload_format="transform",
        transform=MAPPING,
        parameters=[{"name": "account", "value": "ACME-1"}],
    )
    event = push(api, ORDER_NEW)

    [request] = subscriber.wait_for("/service")
    order = ORDER_NEW["payload"]["order"]
    expected = {
        "OrderNumber": order["number"],
        "Customer": f"{order['billing_address']['firstname']} {order['billing_address']['lastname']}",
        "Lines": [
            {"Sku": i["sku"], "Qty": i["quantity"], "Amount": i["price"] * i["quantity"]} for i in order["line_items"]
        ],
        "Total": order["totals"]["order"],
        "Account": "ACME-1",
        "Source": f"{event.store.name}/order:new",
    }
    assert json.loads(request.body) == expected
    assert set(json.loads(request.body)) == set(expected)
    assert signed(sub, request) == expected
    wait_state(delivery_of(event, sub), "delivered")


def test_a_failing_transform_fails_the_delivery_once_saying_where(worker, subscriber, api):
    sub = SubscriptionFactory(
        url=subscriber.url("/service"),
        message_types=["order:new"],
        payload_format="transform",
        transform='{"total": $sum(payload.order.number)}',
        retry_schedule=[0.1, 0.1],
    )
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "R9"}}})

    delivery = wait_state(delivery_of(event, sub), "failed")
    [attempt] = delivery.attempts.all()
    assert attempt.status_code is None and not attempt.succeeded
    assert attempt.error.startswith("the transform failed at character")
    assert "T0412" in attempt.error
    assert subscriber.received("/service") == []


def test_a_transform_that_never_ends_is_stopped_and_the_worker_goes_on(worker, subscriber, api, settings):
    looping = SubscriptionFactory(
        name="looping",
        url=subscriber.url("/looping"),
        message_types=["order:new"],
        payload_format="transform",
        transform="(function($f){$f($f)})(function($g){$g($g)})",
    )
    fine = SubscriptionFactory(url=subscriber.url("/fine"), message_types=["order:new"])
    event = push(api, {"message": "order:new", "payload": {"order": {"number": "R10"}}})

    delivery = wait_state(delivery_of(event, looping), "failed")
    [attempt] = delivery.attempts.all()
    assert "took longer than" in attempt.error
    wait_state(delivery_of(event, fine), "delivered")
    assert subscriber.received("/looping") == []


def test_a_flat_endpoints_summary_is_kept_and_its_parameters_object_goes_out_next(worker, subscriber, api):
    subscriber.respond_with("/spree/add_order", newer_endpoint(key=KEY, parameters={"last_order": "R11"}))
    subscriber.respond_with("/spree/update_order", newer_endpoint(key=KEY))
    sub = SubscriptionFactory(
        url=subscriber.url("/spree"),
        message_types=["order:*"],
        payload_format="flat",
        token=KEY,
        parameters=[{"name": "store_id", "value": "42"}],
    )
    created = push(api, {"message": "order:new", "payload": {"order": {"number": "R11"}}})
    updated = push(api, {"message": "order:updated", "payload": {"order": {"number": "R11"}}})

    wait_state(delivery_of(updated, sub), "delivered")
    delivery = wait_state(delivery_of(created, sub), "delivered")
    assert delivery.attempts.get().summary == "Order R11 received"
    [add] = subscriber.received("/spree/add_order")
    [update] = subscriber.received("/spree/update_order")
    assert add.json()["parameters"] == {"store_id": "42"}
    # What the reply to the order's first message returned is on its very next one.
    assert update.json()["parameters"] == {"store_id": "42", "last_order": "R11"}
