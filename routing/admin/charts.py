"""Bar charts for the admin's dashboard, drawn on the server as inline SVG: no script, nothing fetched,
so the admin works offline. Pure functions from a series to geometry; the template only places it.
Every bar carries its numbers as text (a <title>), and each chart has a table of the same numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

# The SVG's own coordinate system; CSS scales it to the column's width.
CHART_WIDTH = 480
CHART_HEIGHT = 120
# Room on the left for the scale's number and below for the times.
PLOT_LEFT = 34
PLOT_BOTTOM = 18
BAR_GAP = 1.0


@dataclass(frozen=True)
class Point:
    """One bucket of a series: when it starts and the values stacked in it, bottom first."""

    start: datetime
    values: tuple[int, ...]


@dataclass(frozen=True)
class Segment:
    y: float
    height: float
    css: str


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    segments: tuple[Segment, ...]
    title: str


@dataclass(frozen=True)
class Tick:
    x: float
    text: str


@dataclass(frozen=True)
class BarChart:
    chart_id: str
    title: str
    width: int
    height: int
    plot_left: int
    plot_bottom: float
    scale_max: int
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    labels: tuple[str, ...]
    rows: tuple[tuple[str, tuple[int, ...]], ...]
    totals: tuple[int, ...]

    @property
    def empty(self) -> bool:
        return not any(self.totals)

    @property
    def summary(self) -> tuple[tuple[int, str], ...]:
        """Each series' total and its label, for the caption."""
        return tuple(zip(self.totals, self.labels, strict=True))


def nice_ceiling(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1): a scale a
    reader takes in at a glance."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return int(step * power)
    return int(10 * power)  # pragma: no cover - the loop always returns


def bar_chart(
    points: Sequence[Point],
    *,
    chart_id: str,
    title: str,
    labels: Sequence[str],
    css: Sequence[str],
    tick_minutes: int,
) -> BarChart:
    """Bars for `points`, the values of each stacked bottom up with the CSS classes `css`, scaled so
    the tallest bar reaches a round number; the time under each bar that starts on a multiple of
    `tick_minutes` of the local day (every quarter hour, every four hours)."""
    labels = tuple(labels)
    plot_width = CHART_WIDTH - PLOT_LEFT
    plot_height = CHART_HEIGHT - PLOT_BOTTOM
    scale_max = nice_ceiling(max((sum(p.values) for p in points), default=0))
    step = plot_width / max(len(points), 1)
    bars = []
    ticks = []
    local = [timezone.localtime(point.start) for point in points]
    clocks = [moment.strftime("%H:%M") for moment in local]
    for index, point in enumerate(points):
        x = PLOT_LEFT + index * step
        base = float(plot_height)
        segments = []
        for value, css_class in zip(point.values, css, strict=True):
            if value <= 0:
                continue
            height = value / scale_max * plot_height
            base -= height
            segments.append(Segment(y=round(base, 2), height=round(height, 2), css=css_class))
        numbers = ", ".join(f"{value} {label}" for value, label in zip(point.values, labels, strict=True))
        bars.append(
            Bar(
                x=round(x + BAR_GAP / 2, 2),
                width=round(max(step - BAR_GAP, 0.5), 2),
                segments=tuple(segments),
                title=f"{clocks[index]}: {numbers}",
            )
        )
        if (local[index].hour * 60 + local[index].minute) % tick_minutes == 0:
            ticks.append(Tick(x=round(x, 2), text=clocks[index]))
    totals = tuple(sum(p.values[i] for p in points) for i in range(len(labels)))
    return BarChart(
        chart_id=chart_id,
        title=title,
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        plot_left=PLOT_LEFT,
        plot_bottom=float(plot_height),
        scale_max=scale_max,
        bars=tuple(bars),
        ticks=tuple(ticks),
        labels=labels,
        rows=tuple(zip(clocks, (p.values for p in points), strict=True)),
        totals=totals,
    )


@dataclass(frozen=True)
class LatencyBar:
    name: str
    attempts: int
    failed: int
    p50_ms: float
    p99_ms: float
    p50_width: float
    p99_width: float


LATENCY_BAR_WIDTH = 200


def latency_bars(rows: Sequence[tuple[str, int, int, float, float]]) -> tuple[tuple[LatencyBar, ...], int]:
    """Per endpoint (name, attempts, failed, p50, p99), the widths of its p50 and p99 bars on one
    scale shared by every endpoint, and that scale's top in milliseconds."""
    scale_max = nice_ceiling(max((row[4] for row in rows), default=0))
    bars = tuple(
        LatencyBar(
            name=name,
            attempts=attempts,
            failed=failed,
            p50_ms=p50,
            p99_ms=p99,
            p50_width=round(p50 / scale_max * LATENCY_BAR_WIDTH, 2),
            p99_width=round(p99 / scale_max * LATENCY_BAR_WIDTH, 2),
        )
        for name, attempts, failed, p50, p99 in rows
    )
    return bars, scale_max
