"""A subscription deleted by another process while this one still routes by its remembered list
(routing.subscriptions, HUB_SUBSCRIPTIONS_CACHE_SECONDS): the push is routed again by the list as it
is now, not refused with a server error, and nothing is half-written. The pushes wake no worker
(unconsumed_queue): one sending the deliveries would race the deletion."""

from __future__ import annotations

import pytest

from events.models import Event, EventStatus
from routing.models import Delivery, Subscription
from tests.factories import StoreFactory, SubscriptionFactory


def _envelope(message_id: str, number: str = "R1") -> dict:
    return {"message": "order:new", "message_id": message_id, "payload": {"order": {"number": number}}}


def _deleted_behind_this_processs_back(sub: Subscription) -> None:
    # A queryset delete skips Subscription.delete, which would have this process forget its list:
    # what a delete in another process (admin on another web worker) looks like from here.
    Subscription.objects.filter(pk=sub.pk).delete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("others", [0, 1])
def test_a_push_routed_to_a_deleted_subscription_is_routed_again(client_for, unconsumed_queue, others):
    store = StoreFactory()
    gone = SubscriptionFactory(message_types=["order:new"])
    kept = [SubscriptionFactory(message_types=["order:*"]) for _ in range(others)]
    api = client_for(store)
    assert api.post("/events", _envelope("before"), format="json").status_code == 202  # list remembered
    _deleted_behind_this_processs_back(gone)

    response = api.post("/events", _envelope("after", "R2"), format="json")

    assert response.status_code == 202, response.content
    event = Event.objects.get(message_id="after")
    assert list(event.deliveries.values_list("subscription_id", flat=True)) == [s.pk for s in kept]
    assert event.status == (EventStatus.QUEUED if kept else EventStatus.UNROUTED)


@pytest.mark.django_db(transaction=True)
def test_a_batch_routed_to_a_deleted_subscription_is_routed_again(client_for, unconsumed_queue):
    store = StoreFactory()
    gone = SubscriptionFactory(message_types=["order:new"])
    kept = SubscriptionFactory(message_types=["order:new"])
    api = client_for(store)
    assert api.post("/events", _envelope("before"), format="json").status_code == 202
    _deleted_behind_this_processs_back(gone)

    response = api.post("/events/batch", [_envelope("b1", "R1"), _envelope("b2", "R2")], format="json")

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 2
    assert set(
        Delivery.objects.filter(event__message_id__in=["b1", "b2"]).values_list("subscription_id", flat=True)
    ) == {kept.pk}
