"""Counts that cost the same however much history is stored (infra.counts): exact while the planner
expects fewer rows than HUB_EXACT_COUNT_LIMIT, its estimate above, and every reader (dashboard,
hubstatus, /metrics, the admin's lists) says which are estimates."""

from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from infra.counts import count_bounded, count_estimate, tallies_by
from routing.backlog import delivery_state_counts
from routing.models import Delivery, DeliveryState
from tests.factories import DeliveryFactory, SubscriptionFactory
from tests.ops.test_commands import run

pytestmark = pytest.mark.django_db

DELIVERED = 30


def _postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("estimates are PostgreSQL's planner's")


@pytest.fixture
def history(settings) -> None:
    """30 delivered deliveries, 2 failed and 1 pending, with statistics, and a limit of 10: the
    delivered are "a large history", the rest a small queue."""
    settings.HUB_EXACT_COUNT_LIMIT = 10
    sub = SubscriptionFactory(name="erp")
    DeliveryFactory.create_batch(DELIVERED, subscription=sub, state=DeliveryState.DELIVERED)
    DeliveryFactory.create_batch(2, subscription=sub, state=DeliveryState.FAILED)
    DeliveryFactory(subscription=sub, state=DeliveryState.PENDING)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE routing_delivery")


def _near(n: int) -> bool:
    # ANALYZE samples all 33 rows, so the estimate is close; not exact (it scales by pages).
    return DELIVERED * 2 // 3 <= n <= DELIVERED * 3 // 2


def test_below_the_limit_every_count_is_exact():
    sub = SubscriptionFactory(name="erp")
    DeliveryFactory.create_batch(3, subscription=sub, state=DeliveryState.DELIVERED)
    DeliveryFactory(subscription=sub, state=DeliveryState.RETRYING)

    counts = delivery_state_counts()

    assert counts == {"pending": 0, "delivering": 0, "delivered": 3, "retrying": 1, "failed": 0, "cancelled": 0}
    assert counts.estimated == frozenset()
    assert count_bounded(Delivery.objects.all()) == (4, False)


def test_a_state_past_the_limit_is_the_planners_estimate_and_the_rest_are_counted(history):
    _postgresql()
    with CaptureQueriesContext(connection) as captured:
        counts = delivery_state_counts()

    assert counts.estimated == {"delivered"}
    assert _near(counts["delivered"])
    assert {s: n for s, n in counts.items() if s != "delivered"} == {
        "pending": 1,
        "delivering": 0,
        "retrying": 0,
        "failed": 2,
        "cancelled": 0,
    }
    # What is estimated is never read row by row: only EXPLAINs name it.
    counted = [q["sql"] for q in captured.captured_queries if not q["sql"].startswith("EXPLAIN")]
    assert counted and not any("'delivered'" in sql for sql in counted)


def test_a_bounded_count_is_exact_for_a_small_filter_and_estimated_for_a_large_one(history):
    _postgresql()
    everything, estimated = count_bounded(Delivery.objects.all())
    assert estimated and _near(everything - 3)
    assert count_estimate(Delivery.objects.all()) == everything
    assert count_bounded(Delivery.objects.filter(state=DeliveryState.FAILED)) == (2, False)


def test_on_sqlite_there_is_no_estimate_and_counts_stay_exact(settings):
    if connection.vendor == "postgresql":
        pytest.skip("SQLite's side")
    settings.HUB_EXACT_COUNT_LIMIT = 1
    DeliveryFactory.create_batch(3, state=DeliveryState.DELIVERED)
    assert count_estimate(Delivery.objects.all()) is None
    tallies = tallies_by(Delivery.objects.all(), "state", ["delivered", "failed"])
    assert tallies == {"delivered": 3, "failed": 0} and tallies.estimated == frozenset()


def test_the_dashboard_marks_an_estimate(history, admin_client):
    _postgresql()
    text = admin_client.get("/admin/").content.decode()
    delivered = re.search(r'hub-delivered">Delivered</span> <span class="hub-estimate"[^>]*>~(\d+)</span>', text)
    assert delivered and _near(int(delivered.group(1)))
    # Small ones stay plain numbers, the queue's included.
    assert re.search(r'id="count-queued" href="[^"]+"><strong>1</strong>', text)
    assert re.search(r'hub-failed">Failed</span> 2</a>', text)


def test_hubstatus_marks_an_estimate(history):
    _postgresql()
    out, _ = run("hubstatus")
    delivered = re.search(r"  delivered +~(\d+)\n", out)
    assert delivered and _near(int(delivered.group(1)))
    assert "  failed               2" in out
    report = json.loads(run("hubstatus", "--json")[0])
    assert report["deliveries_estimated"] == ["delivered"]
    assert _near(report["deliveries"]["delivered"]) and report["deliveries"]["failed"] == 2


def test_metrics_report_the_estimate(history, client):
    _postgresql()
    text = client.get("/metrics").content.decode()
    delivered = re.search(r'hub_deliveries\{state="delivered"\} (\d+)\.0', text)
    assert delivered and _near(int(delivered.group(1)))
    assert 'hub_deliveries{state="failed"} 2.0' in text


def test_an_admin_list_counts_a_large_page_by_estimate_and_a_small_one_exactly(history, admin_client):
    _postgresql()
    everything = admin_client.get("/admin/routing/delivery/").context["cl"]
    assert everything.result_count == count_estimate(Delivery.objects.all())
    failed = admin_client.get("/admin/routing/delivery/?state__exact=failed").context["cl"]
    assert failed.result_count == 2
