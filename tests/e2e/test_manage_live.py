"""The management API for real: a store and a subscription made through it, an event pushed with
the token it showed, a failure retried by filter and delivered by the real worker, signed with the
secret it showed once."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from ops.models import SCOPES, ManagementKey
from routing.models import Delivery
from tests.live import Reply, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_made_through_the_api_a_failure_is_retried_by_filter_and_delivered(worker, subscriber):
    key = ManagementKey(name="ops", scopes=list(SCOPES))
    manage = APIClient()
    manage.credentials(HTTP_AUTHORIZATION=f"Bearer {key.key_set_new()}")
    key.save()
    token = manage.post("/manage/v1/stores", {"name": "acme"}, format="json").json()["token"]
    body = {"name": "erp", "url": subscriber.url("/erp"), "message_types": ["order:*"], "retry_enabled": False}
    created = manage.post("/manage/v1/subscriptions", body, format="json")
    assert created.status_code == 201, created.content
    secret = created.json()["signing_secret"]

    subscriber.program("/erp", Reply.error(503), Reply.ok())
    store = APIClient()
    store.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    pushed = store.post("/events", {"message": "order:new", "payload": {"order": {"number": "R1"}}}, format="json")
    assert pushed.status_code == 202
    wait_until(lambda: Delivery.objects.filter(state="failed").exists(), 30, message="the delivery failed")

    retry = {"subscription": "erp", "message": "order:*", "dry_run": True}
    assert manage.post("/manage/v1/deliveries/retry", retry, format="json").json()["matched"] == 1
    assert len(subscriber.received("/erp")) == 1
    done = manage.post("/manage/v1/deliveries/retry", {**retry, "dry_run": False}, format="json").json()
    assert done["changed"] == 1
    wait_until(lambda: Delivery.objects.filter(state="delivered").exists(), 30, message="the retry was delivered")
    first, second = subscriber.received("/erp")
    headers = {k.lower(): v for k, v in second.headers.items()}
    assert Webhook(secret).verify(second.body, headers)["payload"]["order"]["number"] == "R1"
    # The same message as the failed attempt: a receiver dedups on webhook-id.
    assert headers["webhook-id"] == {k.lower(): v for k, v in first.headers.items()}["webhook-id"]
