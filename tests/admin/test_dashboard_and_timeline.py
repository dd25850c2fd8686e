"""The admin's front page (counts per state linking to filtered lists, activity charts, latency per
endpoint) and the order timeline."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from routing.admin.charts import Point, bar_chart, latency_bars, nice_ceiling
from routing.admin.selectors import (
    EndpointLatency,
    dashboard_activity,
    endpoint_latency_sample,
    endpoint_latency_sql,
    percentile_cont,
)
from routing.models import Delivery
from tests.factories import AttemptFactory, DeliveryFactory, EventFactory, NotificationFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def count_link(text: str, element_id: str) -> tuple[str, int]:
    match = re.search(rf'id="{element_id}" href="([^"]+)"><strong>(\d+)</strong>', text)
    assert match, element_id
    return match.group(1).replace("&amp;", "&"), int(match.group(2))


def test_dashboard_counts_each_state_and_links_to_the_filtered_list(admin_client):
    DeliveryFactory.create_batch(3, state="pending")
    DeliveryFactory.create_batch(2, state="retrying")
    DeliveryFactory(state="failed")
    yesterday = DeliveryFactory(state="failed")
    last_week = DeliveryFactory(state="failed")
    Delivery.objects.filter(pk=yesterday.pk).update(updated_at=timezone.now() - timedelta(hours=3))
    Delivery.objects.filter(pk=last_week.pk).update(updated_at=timezone.now() - timedelta(days=3))

    text = admin_client.get("/admin/").content.decode()
    expected = {
        "count-queued": 3,
        "count-retrying": 2,
        "count-failed-hour": 1,
        "count-failed-day": 2,
        "count-failed": 3,
        "count-delivering": 0,
    }
    for element_id, count in expected.items():
        url, shown = count_link(text, element_id)
        assert shown == count, element_id
        # The link opens the list of exactly those deliveries.
        assert len(admin_client.get(url).context["cl"].result_list) == count, url


def test_failed_test_sends_are_not_counted_among_the_failed_deliveries(admin_client):
    from routing.operations import TEST_MESSAGE

    DeliveryFactory(state="failed")
    DeliveryFactory(state="failed", event__message=TEST_MESSAGE, event__store=None)

    text = admin_client.get("/admin/").content.decode()
    for element_id in ("count-failed-hour", "count-failed-day"):
        url, shown = count_link(text, element_id)
        assert shown == 1, element_id
        assert len(admin_client.get(url).context["cl"].result_list) == 1, url


def test_dashboard_counts_the_disabled_subscriptions_and_links_to_them(admin_client):
    SubscriptionFactory.create_batch(2, is_enabled=False)
    SubscriptionFactory(is_enabled=True)

    url, shown = count_link(admin_client.get("/admin/").content.decode(), "count-subscriptions-disabled")
    assert shown == 2
    assert len(admin_client.get(url).context["cl"].result_list) == 2


def test_dashboard_counts_events_per_status(admin_client):
    EventFactory.create_batch(2, status="failed")
    EventFactory(status="delivered")
    text = admin_client.get("/admin/").content.decode()
    assert re.search(r'status__exact=failed"><span class="hub-badge hub-failed">Failed</span> 2</a>', text)
    assert re.search(r'status__exact=delivered"><span class="hub-badge hub-delivered">Delivered</span> 1</a>', text)
    assert 'action="/admin/events/event/timeline/"' in text


def test_timeline_lists_an_orders_events_attempts_and_notifications_in_order(admin_client, make_orders):
    first, second = make_orders(2)
    number = first.payload["order"]["number"]
    later = EventFactory(
        store=first.store,
        message="order:updated",
        payload={"order": {"number": number}},
        resource_key=f"order:{number}",
    )
    response = admin_client.get("/admin/events/event/timeline/", {"order": number})
    assert response.status_code == 200
    timeline = response.context["timeline"]
    assert timeline.resource_key == f"order:{number}"
    kinds = [(entry.kind, entry.event.pk) for entry in timeline.entries]
    child = first.children.get()
    # Its two events and the shipment an endpoint returned; nothing of the other order.
    assert {pk for kind, pk in kinds if kind == "event"} == {first.pk, later.pk, child.pk}
    assert second.pk not in {pk for _, pk in kinds}
    assert [kind for kind, pk in kinds if pk == first.pk].count("attempt") == 3
    assert ("notification", first.pk) in kinds and ("delivered", first.pk) in kinds
    times = [entry.at for entry in timeline.entries]
    assert times == sorted(times)
    assert kinds[0] == ("event", first.pk)

    text = response.content.decode()
    assert f"Order {number} imported" in text
    assert "connection refused" in text
    assert f'href="/admin/events/event/{later.pk}/change/"' in text


def test_timeline_takes_a_full_key_and_says_when_nothing_is_known(admin_client, make_orders):
    [event] = make_orders(1)
    child = event.children.get()
    by_key = admin_client.get("/admin/events/event/timeline/", {"key": child.resource_key})
    assert [e.event.pk for e in by_key.context["timeline"].entries] == [child.pk]
    unknown = admin_client.get("/admin/events/event/timeline/", {"order": "R-unknown"})
    assert "Nothing is known about order:R-unknown." in unknown.content.decode()
    empty = admin_client.get("/admin/events/event/timeline/")
    assert empty.status_code == 200 and empty.context["timeline"] is None


def test_timeline_shows_notifications_about_the_order(admin_client):
    subscription = SubscriptionFactory(name="erp")
    delivery = DeliveryFactory(subscription=subscription, event=EventFactory(resource_key="order:R9"))
    NotificationFactory(delivery=delivery, level="error", subject="Customer unknown")
    text = admin_client.get("/admin/events/event/timeline/", {"order": "R9"}).content.decode()
    assert '<span class="hub-badge hub-error">Error</span> Customer unknown' in text
    assert "Notification from erp" in text


def test_dashboard_names_the_oldest_waiting_delivery(admin_client):
    assert "Nothing is waiting to be delivered." in admin_client.get("/admin/").content.decode()
    old = DeliveryFactory(state="retrying", created_at=timezone.now() - timedelta(hours=2))
    DeliveryFactory(state="pending")
    text = admin_client.get("/admin/").content.decode()
    assert f'<a href="/admin/routing/delivery/{old.pk}/change/">delivery {old.pk}</a>' in text
    assert "(retrying), made 2\xa0hours ago" in text


def test_a_pushed_shipment_is_on_its_orders_timeline(admin_client, api, settings):
    settings.HUB_RESOURCE_KEY_PATHS = {}
    order = {"message": "order:new", "message_id": "o-1", "payload": {"order": {"number": "R104702249"}}}
    shipment = {
        "message": "shipment:confirm",
        "message_id": "s-1",
        "payload": {"shipment": {"number": "H9", "order_number": "R104702249", "tracking": "1Z"}},
    }
    assert api.post("/events", order, format="json").status_code == 202
    assert api.post("/events", shipment, format="json").status_code == 202

    timeline = admin_client.get("/admin/events/event/timeline/", {"order": "R104702249"}).context["timeline"]
    messages = [entry.event.message for entry in timeline.entries if entry.kind == "event"]
    assert messages == ["order:new", "shipment:confirm"]


# A fixed "now" far from the factories' own timestamps: 12:34:56, so the current minute is 12:34,
# the hour runs 11:35-12:35 and the day's quarter hours 12:45 the day before to 12:45.
NOW = datetime(2026, 3, 10, 12, 34, 56, tzinfo=UTC)


def at(hour: int, minute: int, second: int = 0, *, day: int = 10) -> datetime:
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def test_activity_counts_pushes_and_attempts_into_their_minute_and_quarter_hour():
    for moment in [
        at(12, 34, 10),
        at(12, 34, 50),
        at(12, 30),
        at(11, 35),  # the hour's first minute
        at(11, 34, 59),  # the day's, not the hour's
        at(12, 45, day=9),  # the day's first quarter hour
        at(12, 44, 59, day=9),  # too old for either
        at(12, 35),  # after the current minute: a clock ahead, not counted
    ]:
        EventFactory(created_at=moment)
    delivery = DeliveryFactory()
    for number, (moment, succeeded) in enumerate(
        [(at(12, 34, 1), True), (at(12, 34, 2), False), (at(12, 0), False), (at(3, 7), True), (at(3, 1), False)],
        start=1,
    ):
        AttemptFactory(delivery=delivery, number=number, started_at=moment, succeeded=succeeded)

    activity = dashboard_activity(now=NOW)

    assert len(activity.last_hour) == 60 and len(activity.last_day) == 96
    assert activity.last_hour[0].start == at(11, 35) and activity.last_hour[-1].start == at(12, 34)
    assert activity.last_day[0].start == at(12, 45, day=9) and activity.last_day[-1].start == at(12, 30)
    hour = {b.start: (b.pushed, b.attempts, b.failed) for b in activity.last_hour if b.pushed or b.attempts}
    assert hour == {
        at(12, 34): (2, 2, 1),
        at(12, 30): (1, 0, 0),
        at(12, 0): (0, 1, 1),
        at(11, 35): (1, 0, 0),
    }
    day = {b.start: (b.pushed, b.attempts, b.failed) for b in activity.last_day if b.pushed or b.attempts}
    assert day == {
        at(12, 30): (3, 2, 1),
        at(12, 0): (0, 1, 1),
        at(11, 30): (2, 0, 0),
        at(3, 0): (0, 2, 1),
        at(12, 45, day=9): (1, 0, 0),
    }


def test_percentile_cont_interpolates_as_postgresql_does():
    assert percentile_cont(range(1, 101), 0.5) == 50.5
    assert percentile_cont(range(1, 101), 0.99) == pytest.approx(99.01)
    assert percentile_cont([30, 10, 40, 20], 0.5) == 25.0
    assert percentile_cont([7], 0.99) == 7.0
    assert percentile_cont([1, 9], 0.0) == 1.0 and percentile_cont([1, 9], 1.0) == 9.0
    with pytest.raises(ValueError):
        percentile_cont([], 0.5)


def test_latency_per_endpoint_over_the_last_hour_is_p50_and_p99_of_its_attempts():
    slow = DeliveryFactory(subscription=SubscriptionFactory(name="slow-erp"))
    quick = DeliveryFactory(subscription=SubscriptionFactory(name="quick-crm"))
    idle = DeliveryFactory(subscription=SubscriptionFactory(name="idle"))
    for ms in range(1, 101):
        AttemptFactory(delivery=slow, number=ms, latency_ms=ms, started_at=NOW - timedelta(seconds=30 * ms))
    for number, ms in enumerate([40, 10, 30, 20], start=1):
        AttemptFactory(delivery=quick, number=number, latency_ms=ms, started_at=NOW, succeeded=ms != 40)
    # Outside the hour: neither counted nor shown.
    AttemptFactory(delivery=quick, number=9, latency_ms=90_000, started_at=at(11, 34, 59))
    AttemptFactory(delivery=idle, number=1, latency_ms=5, started_at=NOW - timedelta(hours=2))

    expected = [
        EndpointLatency(slow.subscription_id, "slow-erp", attempts=100, failed=100, p50_ms=50.5, p99_ms=99.01),
        EndpointLatency(quick.subscription_id, "quick-crm", attempts=4, failed=1, p50_ms=25.0, p99_ms=39.7),
    ]
    activity = dashboard_activity(now=NOW)
    assert not activity.latency_sampled

    def rounded(rows):
        return [(r.subscription_id, r.name, r.attempts, r.failed, round(r.p50_ms, 6), round(r.p99_ms, 6)) for r in rows]

    assert rounded(activity.latency) == rounded(expected)
    # PostgreSQL's percentile_cont and the Python path used elsewhere agree on the same rows.
    start, end = at(11, 35), at(12, 35)
    if connection.vendor == "postgresql":
        assert rounded(endpoint_latency_sql(start=start, end=end)) == rounded(expected)
    sample, sampled = endpoint_latency_sample(start=start, end=end)
    assert rounded(sample) == rounded(expected) and not sampled


def test_latency_sample_says_when_it_was_cut(monkeypatch):
    import routing.admin.selectors as selectors

    delivery = DeliveryFactory()
    for number in range(1, 6):
        AttemptFactory(
            delivery=delivery, number=number, latency_ms=number * 10, started_at=NOW - timedelta(minutes=number)
        )
    monkeypatch.setattr(selectors, "LATENCY_SAMPLE_MAX", 3)
    [row], sampled = endpoint_latency_sample(start=at(11, 35), end=at(12, 35))
    # Only the three latest attempts (numbers 1 to 3) are sampled: their median is the second's.
    assert sampled and (row.attempts, row.p50_ms) == (3, 20.0)


def test_nice_ceiling_is_a_round_scale():
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 10, 11, 150, 201, 999)] == [1, 1, 5, 10, 10, 20, 200, 500, 1000]


def test_bar_chart_scales_and_stacks_the_series_and_titles_every_bar():
    points = [Point(at(12, 0), (0, 0)), Point(at(12, 1), (3, 2)), Point(at(12, 2), (10, 0))]
    chart = bar_chart(
        points, chart_id="c", title="Attempts", labels=["succeeded", "failed"], css=["ok", "bad"], tick_minutes=2
    )
    plot = chart.plot_bottom
    assert chart.scale_max == 10 and chart.totals == (13, 2) and not chart.empty
    empty, mixed, full = chart.bars
    assert empty.segments == () and empty.title == "12:00: 0 succeeded, 0 failed"
    assert mixed.title == "12:01: 3 succeeded, 2 failed"
    ok, bad = mixed.segments
    # Stacked from the baseline up: succeeded first, failed on top of it.
    assert (ok.css, ok.height, ok.y) == ("ok", pytest.approx(plot * 0.3), pytest.approx(plot * 0.7))
    assert (bad.css, bad.height, bad.y) == ("bad", pytest.approx(plot * 0.2), pytest.approx(plot * 0.5))
    assert full.segments[0].y == 0 and full.segments[0].height == pytest.approx(plot)
    assert empty.x < mixed.x < full.x and all(bar.width > 0 for bar in chart.bars)
    assert [tick.text for tick in chart.ticks] == ["12:00", "12:02"]
    assert chart.rows[1] == ("12:01", (3, 2))


def test_latency_bars_share_one_scale():
    bars, scale = latency_bars([("a", 10, 0, 50.0, 180.0), ("b", 5, 1, 10.0, 40.0)])
    assert scale == 200
    assert [(bar.p50_width, bar.p99_width) for bar in bars] == [(50.0, 180.0), (10.0, 40.0)]


def test_an_empty_hub_draws_empty_charts(admin_client):
    text = admin_client.get("/admin/").content.decode()
    for chart_id in ("chart-pushed-hour", "chart-attempts-hour", "chart-pushed-day", "chart-attempts-day"):
        assert f'id="{chart_id}"' in text
    assert text.count('<svg viewBox="0 0 ') == 4
    assert "hub-bar-pushed" not in text and "hub-bar-failed" not in text
    assert "No delivery attempts in the last hour." in text


def test_dashboard_draws_the_last_hours_pushes_failures_and_latency(admin_client):
    subscription = SubscriptionFactory(name="erp-prod")
    delivery = DeliveryFactory(subscription=subscription)
    minute = timezone.now().replace(second=0, microsecond=0)
    AttemptFactory(delivery=delivery, number=1, started_at=minute, succeeded=False, latency_ms=120)
    AttemptFactory(delivery=delivery, number=2, started_at=minute, succeeded=True, latency_ms=80)

    text = admin_client.get("/admin/").content.decode()
    clock = timezone.localtime(minute).strftime("%H:%M")
    hour_chart = text.split('id="chart-attempts-hour"')[1].split("</figure>")[0]
    assert f"<title>{clock}: 1 succeeded, 1 failed</title>" in hour_chart
    assert hour_chart.count('class="hub-bar-failed"') == 1 and hour_chart.count('class="hub-bar-succeeded"') == 1
    assert "<strong>2</strong> succeeded" not in hour_chart and "<strong>1</strong> failed" in hour_chart
    # The event the delivery was made for was pushed this minute too.
    pushed_chart = text.split('id="chart-pushed-hour"')[1].split("</figure>")[0]
    assert f"<title>{clock}: 1 pushed</title>" in pushed_chart
    latency = text.split('id="hub-latency"')[1].split("</table>")[0]
    assert '<th scope="row">erp-prod</th>' in latency
    assert "<td>100 ms</td>" in latency and "<td>120 ms</td>" in latency  # p50 and p99 of 80 and 120
