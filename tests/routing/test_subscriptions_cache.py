"""Routing reads the enabled subscriptions at most once per HUB_SUBSCRIPTIONS_CACHE_SECONDS per
process (routing.subscriptions.subscriptions_enabled_for_routing): what a change to them reaches, and
when."""

import time

import pytest
from django.conf import settings as django_settings

from events.models import Event
from infra import ttl
from routing.models import Delivery, Subscription
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

ENVELOPE = {"message": "order:new", "payload": {"order": {"number": "R1"}}}


def _push(api, message_id: str) -> Event:
    response = api.post("/events", {**ENVELOPE, "message_id": message_id}, format="json")
    assert response.status_code == 202
    return Event.objects.get(message_id=message_id)


def test_a_subscription_saved_here_is_routed_to_by_the_next_push(api):
    assert _push(api, "before").status == "unrouted"  # the empty list is now remembered
    sub = SubscriptionFactory()
    event = _push(api, "after")
    assert list(Delivery.objects.filter(event=event).values_list("subscription_id", flat=True)) == [sub.pk]


def test_a_subscription_deleted_here_is_not_routed_to(api):
    sub = SubscriptionFactory()
    assert Delivery.objects.filter(event=_push(api, "first")).count() == 1
    sub.delete()
    assert _push(api, "second").status == "unrouted"


def test_a_change_behind_the_process_back_reaches_routing_once_the_lifetime_has_passed(api, monkeypatch):
    sub = SubscriptionFactory()
    assert Delivery.objects.filter(event=_push(api, "one")).count() == 1
    # Another process (or a queryset update, as the automatic disable does) turns it off.
    Subscription.objects.filter(pk=sub.pk).update(is_enabled=False)
    # Within the lifetime the remembered list still routes to it: the documented staleness.
    assert Delivery.objects.filter(event=_push(api, "two")).count() == 1
    later = time.monotonic() + django_settings.HUB_SUBSCRIPTIONS_CACHE_SECONDS + 0.1
    monkeypatch.setattr(ttl.time, "monotonic", lambda: later)
    assert _push(api, "three").status == "unrouted"


def test_with_no_lifetime_every_push_reads_the_subscriptions(api, settings):
    settings.HUB_SUBSCRIPTIONS_CACHE_SECONDS = 0
    sub = SubscriptionFactory()
    assert Delivery.objects.filter(event=_push(api, "one")).count() == 1
    Subscription.objects.filter(pk=sub.pk).update(is_enabled=False)
    assert _push(api, "two").status == "unrouted"


def test_routing_reads_and_keeps_no_secret_of_the_subscriptions(api):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from routing.subscriptions import subscriptions_cache_clear, subscriptions_enabled_for_routing

    SubscriptionFactory(parameters=[{"name": "api_key", "value": "k1"}], filters=[])
    subscriptions_cache_clear()
    [kept] = subscriptions_enabled_for_routing()
    # A web process routes but never signs: the secrets stay encrypted in the database.
    assert {"token", "signing_secret", "previous_signing_secret", "parameters"} <= kept.get_deferred_fields()
    assert "k1" not in repr(vars(kept))
    # And a push routes by what was read: no query loads what was left out.
    with CaptureQueriesContext(connection) as queries:
        event = _push(api, "routed")
    assert Delivery.objects.filter(event=event).count() == 1
    assert not [q["sql"] for q in queries if 'FROM "routing_subscription"' in q["sql"]]
