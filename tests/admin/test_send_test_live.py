"""'Send a test event' for real: the admin clicks it, the real worker sends a signed hub:test to a
real endpoint, and the delivery page the admin lands on shows the endpoint's answer."""

from __future__ import annotations

import pytest
from standardwebhooks.webhooks import Webhook

from routing.models import Delivery
from tests.factories import SubscriptionFactory
from tests.live import Reply, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_send_test_event_shows_the_endpoints_answer(worker, subscriber, admin_client):
    subscriber.program("/ping", Reply(200, json={"pong": "from the ERP"}))
    subscription = SubscriptionFactory(url=subscriber.url("/ping"))
    response = admin_client.post(f"/admin/routing/subscription/{subscription.pk}/send-test/")
    page_url = response["Location"]

    def delivered_page() -> str | None:
        text = admin_client.get(page_url).content.decode()
        return text if '<span class="hub-badge hub-delivered">Delivered</span>' in text else None

    text = wait_until(delivered_page, 30, message="the test delivery's page shows it delivered")
    assert "pong" in text and "from the ERP" in text
    assert 'http-equiv="refresh"' not in text
    [request] = subscriber.received("/ping")
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert Webhook(subscription.signing_secret).verify(request.body, headers)["message"] == "hub:test"
    delivery = Delivery.objects.get(subscription=subscription)
    assert (delivery.state, delivery.attempt_count) == ("delivered", 1)


def test_send_test_to_a_failing_endpoint_shows_the_failure_without_retrying(worker, subscriber, admin_client):
    subscriber.program("/down", Reply.error(503))
    subscription = SubscriptionFactory(url=subscriber.url("/down"))
    page_url = admin_client.post(f"/admin/routing/subscription/{subscription.pk}/send-test/")["Location"]

    def failed_page() -> str | None:
        text = admin_client.get(page_url).content.decode()
        return text if '<span class="hub-badge hub-failed">Failed</span>' in text else None

    text = wait_until(failed_page, 30, message="the test delivery's page shows it failed")
    assert "503" in text and "boom" in text
    assert len(subscriber.received("/down")) == 1
