"""Every admin page runs a fixed number of queries, however many events, deliveries and attempts
there are: the count is pinned, and the same with 3 orders as with 30."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from events.models import Event, Store
from routing.models import Delivery, Subscription

pytestmark = pytest.mark.django_db


def pages() -> dict[str, tuple[str, int]]:
    """Each page and the most queries it may run (session and user included). On PostgreSQL a list
    and the dashboard ask the planner's estimate before counting (infra.counts): one query more each
    (the dashboard two), on SQLite none."""
    event = Event.objects.filter(parent__isnull=True).order_by("id").first()
    child = Event.objects.filter(parent__isnull=False).order_by("id").first()
    failed = Delivery.objects.filter(state="failed").order_by("id").first()
    subscription = Subscription.objects.order_by("id").first()
    store = Store.objects.order_by("id").first()
    number = event.payload["order"]["number"]
    return {
        # One of them reads the schedules (their last run, next run and last error).
        "dashboard": ("/admin/", 16),
        "events": ("/admin/events/event/", 7),
        "events filtered": (
            f"/admin/events/event/?status__exact=failed&message=order%3Anew&store__id__exact={store.pk}",
            7,
        ),
        "events by date": ("/admin/events/event/?created_at__gte=2000-01-01T00%3A00%3A00%2B00%3A00", 7),
        "events searched": (f"/admin/events/event/?q={number}", 7),
        "event": (f"/admin/events/event/{event.pk}/change/", 7),
        "returned event": (f"/admin/events/event/{child.pk}/change/", 6),
        "deliveries": ("/admin/routing/delivery/", 6),
        "deliveries failed in the last hour": ("/admin/routing/delivery/?state__exact=failed&changed=hour", 6),
        "deliveries of a subscription": (f"/admin/routing/delivery/?subscription__id__exact={subscription.pk}", 6),
        "deliveries searched": (f"/admin/routing/delivery/?q={number}", 6),
        "delivery": (f"/admin/routing/delivery/{failed.pk}/change/", 4),
        "subscriptions": ("/admin/routing/subscription/", 6),
        "subscription": (f"/admin/routing/subscription/{subscription.pk}/change/", 4),
        "stores": ("/admin/events/store/", 5),
        "store": (f"/admin/events/store/{store.pk}/change/", 3),
        "timeline": (f"/admin/events/event/timeline/?order={number}", 7),
    }


def queries_of(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(captured)


def test_page_query_counts_do_not_grow_with_the_data(admin_client, make_orders, django_assert_max_num_queries):
    make_orders(3)
    # A first visit also fills per-process caches (content types); measure from the second on.
    for url, _ in pages().values():
        queries_of(admin_client, url)
    small = {name: queries_of(admin_client, url) for name, (url, _) in pages().items()}
    make_orders(27)
    large = {}
    for name, (url, most) in pages().items():
        with django_assert_max_num_queries(most, info=name):
            large[name] = queries_of(admin_client, url)
    assert small == large
