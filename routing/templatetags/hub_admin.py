"""Template tags of the hub's admin pages: the dashboard and the buttons on a delivery."""

from __future__ import annotations

from html import escape
from typing import Any

from django import template
from django.utils.safestring import SafeString, mark_safe

from events.models import EventStatus
from routing.admin.charts import BarChart, Point, bar_chart, latency_bars
from routing.admin.display import badge
from routing.admin.selectors import Bucket, dashboard_activity, dashboard_counts
from routing.models import DELIVERY_OPEN_STATES, Delivery, DeliveryState
from routing.schedules import schedules_overview

register = template.Library()

# Which buttons make sense in which state; clicking one twice is harmless either way.
_RETRYABLE = {*DELIVERY_OPEN_STATES, DeliveryState.FAILED}


@register.inclusion_tag("admin/routing/delivery_buttons.html", takes_context=True)
def hub_delivery_buttons(context: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
    buttons = []
    if delivery.state in _RETRYABLE:
        buttons += [("retry_now", "Retry now"), ("cancel", "Cancel")]
    if delivery.state != DeliveryState.DELIVERING:
        buttons.append(("replay", "Replay"))
    return {
        "delivery": delivery,
        "hub_delivery_buttons": buttons,
        "request": context.get("request"),
        "csrf_token": context.get("csrf_token"),
    }


def _activity_charts(period: str, buckets: list[Bucket], *, tick_minutes: int) -> tuple[BarChart, BarChart]:
    pushed = bar_chart(
        [Point(b.start, (b.pushed,)) for b in buckets],
        chart_id=f"chart-pushed-{period}",
        title="Events pushed",
        labels=["pushed"],
        css=["hub-bar-pushed"],
        tick_minutes=tick_minutes,
    )
    attempts = bar_chart(
        [Point(b.start, (b.attempts - b.failed, b.failed)) for b in buckets],
        chart_id=f"chart-attempts-{period}",
        title="Delivery attempts",
        labels=["succeeded", "failed"],
        css=["hub-bar-succeeded", "hub-bar-failed"],
        tick_minutes=tick_minutes,
    )
    return pushed, attempts


@register.inclusion_tag("admin/routing/dashboard.html")
def hub_dashboard() -> dict[str, Any]:
    counts = dashboard_counts()
    activity = dashboard_activity()
    latency, latency_scale = latency_bars(
        [(e.name, e.attempts, e.failed, e.p50_ms, e.p99_ms) for e in activity.latency]
    )
    return {
        "counts": counts,
        "hour_charts": _activity_charts("hour", activity.last_hour, tick_minutes=15),
        "day_charts": _activity_charts("day", activity.last_day, tick_minutes=4 * 60),
        "latency": latency,
        "latency_scale": latency_scale,
        "latency_sampled": activity.latency_sampled,
        "delivery_states": [
            (state, label, counts.deliveries[state], state in counts.deliveries.estimated)
            for state, label in Delivery.state.field.choices
        ],
        "event_statuses": [
            (status, label, counts.events[status], status in counts.events.estimated)
            for status, label in EventStatus.choices
        ],
        "schedules": schedules_overview(),
    }


@register.simple_tag
def hub_badge(value: str, label: str) -> str:
    return badge(value, label)


# A chart has a bar and a table row per bucket: joined here with the standard library's
# escape, where the same loops in a template (or format_html) cost more than the rest of the page.
@register.simple_tag
def hub_chart_bars(chart: BarChart) -> SafeString:
    """Each bar of `chart` as an SVG group: its numbers as a <title>, a transparent full-height
    rectangle to hover, and a rectangle per stacked value."""
    groups = []
    for bar in chart.bars:
        rects = "".join(
            f'<rect class="{escape(s.css)}" x="{bar.x}" y="{s.y}" width="{bar.width}" height="{s.height}"/>'
            for s in bar.segments
        )
        groups.append(
            f'<g class="hub-bar"><title>{escape(bar.title)}</title><rect class="hub-bar-hit" x="{bar.x}" y="0" '
            f'width="{bar.width}" height="{chart.plot_bottom}"/>{rects}</g>'
        )
    # Every text above is escaped; the rest are numbers.
    return mark_safe("\n".join(groups))


@register.simple_tag
def hub_chart_rows(chart: BarChart) -> SafeString:
    """The chart's numbers as table rows: the bucket's start, then each series' value."""
    rows = (
        f"<tr><td>{escape(start)}</td>{''.join(f'<td>{int(v)}</td>' for v in values)}</tr>"
        for start, values in chart.rows
    )
    return mark_safe("".join(rows))
