"""Row counts whose cost does not grow with stored history: exact while PostgreSQL expects fewer
than settings.HUB_EXACT_COUNT_LIMIT rows, its planner's estimate above (an exact COUNT reads every
row it counts: ~0.3 s per million deliveries, on every scrape and dashboard load)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.conf import settings
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, QuerySet
from django.utils.functional import cached_property


class Tallies(dict[str, int]):
    """Counts by value (every value asked for, 0 when none); `estimated` names those that are the
    planner's estimate rather than a count."""

    def __init__(self, counts: dict[str, int], *, estimated: Iterable[str] = ()) -> None:
        super().__init__(counts)
        self.estimated = frozenset(estimated)


def count_estimate(qs: QuerySet) -> int | None:
    """The rows PostgreSQL's planner expects `qs` to return (from the statistics ANALYZE keeps,
    summed over partitions); None on a database without one."""
    connection = connections[qs.db]
    if connection.vendor != "postgresql":
        return None
    # The cursor, not QuerySet.explain(), which joins rows into text: psycopg hands JSON back parsed.
    statement, params = qs.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {statement}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def _exact(estimate: int | None) -> bool:
    return estimate is None or estimate < settings.HUB_EXACT_COUNT_LIMIT


def count_bounded(qs: QuerySet) -> tuple[int, bool]:
    """`qs.count()` where the planner expects a small answer, else its estimate; and whether it is one."""
    estimate = count_estimate(qs)
    if _exact(estimate):
        return qs.count(), False
    return estimate, True


def tallies_by(qs: QuerySet, field: str, values: Iterable[str]) -> Tallies:
    """How many rows of `qs` hold each of `values` in `field`: one GROUP BY when the whole is small;
    otherwise each value's estimate, and a GROUP BY over those small enough to count."""
    values = list(values)
    # The values too large to count, with their estimates; none when the whole is small.
    estimates: dict[str, int] = {}
    if not _exact(count_estimate(qs)):
        each = {v: count_estimate(qs.filter(**{field: v})) or 0 for v in values}
        estimates = {v: n for v, n in each.items() if not _exact(n)}
    counts = {v: 0 for v in values if v not in estimates}
    if counts:
        rows = qs.filter(**{f"{field}__in": list(counts)}).order_by().values(field).annotate(n=Count("pk"))
        counts.update({row[field]: row["n"] for row in rows})
    return Tallies({v: estimates[v] if v in estimates else counts[v] for v in values}, estimated=estimates)


class BoundedCountPaginator(Paginator):
    """The admin's paginator, counting as count_bounded does: page numbers past an estimate may be
    a little off, which Django's changelist shows as an empty or short last page."""

    @cached_property
    def count(self) -> int:
        return count_bounded(self.object_list)[0]
