"""PROTOCOL §2, delivering an event (hub -> endpoint), end to end: a store pushes the seed
documents over HTTP, the real worker delivers them to a real subscriber, and the endpoint checks
what it got the way an endpoint author would (a Standard Webhooks verifier, the legacy headers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from events.models import Event
from routing.models import Delivery
from tests.factories import SubscriptionFactory
from tests.live import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "seeds"

# seeds/003 spells the update and the cancel the old way; seeds/000: new orders are POSTed,
# updated and cancelled ones PUT.
SEED_003 = [
    ("003_order_new.json", "order:new", "POST"),
    ("003_order_update.json", "order:updated", "PUT"),
    ("003_order_cancel.json", "order:canceled", "PUT"),
]


def test_seed_003_documents_reach_the_endpoint_canonical_signed_and_as_sent(worker, subscriber, api):
    sub = SubscriptionFactory(
        url=subscriber.url("/seed003"), message_types=["order:*"], parameters=[{"name": "warehouse", "value": "W1"}]
    )
    pushed: list[tuple[Event, dict, str, str]] = []
    for name, canonical, method in SEED_003:
        raw = (SEEDS / name).read_bytes()
        response = api.generic("POST", "/events", raw, content_type="application/json")
        assert response.status_code == 202, response.content
        event = Event.objects.get(uid=response.json()["event_id"])
        # As any JSON reader would see the document: a repeated key keeps its last value.
        pushed.append((event, json.loads(raw)["payload"], canonical, method))

    received = subscriber.wait_for("/seed003", count=len(SEED_003))
    by_id = {r.headers["webhook-id"]: r for r in received}
    for event, payload, canonical, method in pushed:
        request = by_id[str(event.uid)]
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = Webhook(sub.signing_secret).verify(request.body, headers)
        assert request.method == method
        assert set(body) == {"message", "message_id", "payload"}
        assert (body["message"], body["message_id"]) == (canonical, event.message_id)
        # The payload as the store sent it (dates, string amounts), plus the subscription's parameters.
        assert body["payload"].pop("parameters") == [{"name": "warehouse", "value": "W1"}]
        assert body["payload"] == payload
        assert body["payload"]["order"]["placed_on"] == "01/01/2013 12:34:22 UTC"
        assert headers["content-type"] == "application/json"
        assert headers["x-hub-token"] == headers["x-augury-token"] == sub.token
        assert headers["x-hub-store"] == event.store.name

    wait_until(
        lambda: set(Delivery.objects.filter(subscription=sub).values_list("state", flat=True)) == {"delivered"},
        message="all three seed deliveries delivered",
    )


@pytest.mark.parametrize(
    ("store_name", "sent_as"),
    [("Boutique Müller", "Boutique M%C3%BCller"), ("東京店", "%E6%9D%B1%E4%BA%AC%E5%BA%97")],
)
def test_a_store_named_outside_ascii_is_delivered_with_its_name_percent_encoded(
    worker, subscriber, client_for, store_name, sent_as
):
    """X-Hub-Store names the store. A name http.client cannot write crashed every attempt (the
    delivery stayed claimed with no attempt recorded); it goes out percent-encoded as UTF-8."""
    from urllib.parse import unquote

    from tests.factories import StoreFactory

    store = StoreFactory(name=store_name)
    sub = SubscriptionFactory(url=subscriber.url("/named"), message_types=["order:*"])
    payload = {"order": {"number": "R30", "email": "müller@exemple.fr", "note": "東京 🎉"}}
    response = client_for(store).post("/events", {"message": "order:new", "payload": payload}, format="json")
    assert response.status_code == 202, response.content

    [request] = subscriber.wait_for("/named")
    # The body is UTF-8 and the signature covers exactly those bytes.
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert Webhook(sub.signing_secret).verify(request.body, headers)["payload"]["order"] == payload["order"]
    assert request.headers["X-Hub-Store"] == sent_as
    assert unquote(request.headers["X-Hub-Store"]) == store_name
    delivery = Delivery.objects.get(subscription=sub)
    wait_until(lambda: Delivery.objects.get(pk=delivery.pk).state == "delivered", message="delivered")


@pytest.mark.parametrize(
    ("message", "method"),
    [
        ("stock:change", "POST"),
        ("stock:update", "PUT"),
        ("stock:updated", "PUT"),
        ("subscription:cancel", "PUT"),
        ("subscription:cancelled", "PUT"),
        ("subscription:canceled", "PUT"),
        ("payment:ready", "POST"),
    ],
)
def test_any_resources_updates_and_cancellations_are_put_however_spelled(message, method):
    """§2: PUT for `*:updated` and `*:canceled`. The alias table folds order/product/user
    spellings at ingest; other resources keep theirs, and must get the same verb."""
    from routing.transport.request import method_for

    assert method_for(message) == method


@pytest.mark.parametrize(("stored", "used"), [(0.5, 0.5), (120, 120), (1000, 120), (0, 10), (-3, 10), (None, 10)])
def test_the_timeout_a_request_waits_is_the_subscriptions_capped_at_120_seconds(stored, used):
    """docs/protocol.md: 'within the subscription's timeout (capped at 120 s)'. The admin form
    refuses more, but a row written otherwise must neither outlast Celery's time limit nor be
    refused by requests (a timeout of 0)."""
    from routing.transport.exchange import timeout_bounded

    assert timeout_bounded(stored) == used
