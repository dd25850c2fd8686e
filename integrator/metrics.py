"""The /metrics endpoint and the counting of pushes: the process counters (infra.metrics) plus
what is waiting (gauges computed from the database when /metrics is scraped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from rest_framework.request import Empty

from infra.metrics import UNKNOWN, event_accepted_count, event_rejected_count, process_registry
from integrator.memory import drf_request_of

logger = logging.getLogger(__name__)


class QueueCollector(Collector):
    """Gauges read from the database at scrape time, so every web process reports the same truth
    and nothing has to keep them up to date."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from routing.backlog import delivery_due_lag_seconds, delivery_oldest_open, delivery_state_counts

        up = GaugeMetricFamily("hub_metrics_database_up", "1 when the queue gauges below could be read.")
        try:
            counts = delivery_state_counts()
            oldest = delivery_oldest_open()
            lag = delivery_due_lag_seconds()
        except Exception:  # noqa: BLE001 - a scrape must still show the process counters
            logger.warning("metrics: could not read the delivery queue", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "hub_deliveries",
            "Deliveries in each state (PostgreSQL's estimate for a state past HUB_EXACT_COUNT_LIMIT).",
            labels=["state"],
        )
        for state, n in counts.items():
            depth.add_metric([state], n)
        yield depth
        yield GaugeMetricFamily(
            "hub_oldest_pending_delivery_age_seconds",
            "Age of the oldest delivery still pending or retrying (0 when none).",
            value=oldest.age_seconds if oldest else 0.0,
        )
        yield GaugeMetricFamily(
            "hub_delivery_due_lag_seconds",
            "How long the most overdue open delivery has been due: workers falling behind.",
            value=lag,
        )


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry()
    registry.register(process_registry())
    registry.register(QueueCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _store_name(request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    name = getattr(user, "name", None)
    return name if isinstance(name, str) and name else UNKNOWN


def _message_label(item: Any) -> str:
    from events.messages import InvalidMessageName, message_canonical

    message = item.get("message") if isinstance(item, dict) else None
    if not isinstance(message, str):
        return UNKNOWN
    try:
        return message_canonical(message)
    except InvalidMessageName:
        # Free text must not become a label: it would make a time series per typo.
        return "invalid"


class IngestMetricsMiddleware:
    """Counts what POST /events and /events/batch did with each pushed event, from the reply the
    API already built, and logs the ids of the events it stored (a line per push, one per batch).
    Lives here, not in the views, so the API stays free of metrics."""

    URL_NAMES = frozenset({"events", "events-batch"})

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        if request.method == "POST" and match is not None and match.url_name in self.URL_NAMES:
            try:
                self.record(request, response)
            except Exception:  # noqa: BLE001 - counting must never break a push
                logger.warning("metrics: could not count a push", exc_info=True)
        return response

    def record(self, request: HttpRequest, response: HttpResponse) -> None:
        data = getattr(response, "data", None)
        store = _store_name(request)
        sent = self.request_data(response)
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            self.record_batch(store, data["results"], sent)
            return
        self.record_one(store, data if isinstance(data, dict) else {}, response.status_code, sent)

    @staticmethod
    def record_batch(store: str, results: list[dict[str, Any]], sent: Any) -> None:
        """A batch's counts, and one log line for the batch with the ids it stored: a line per
        event cost a batch of 20 orders as much CPU as its INSERT's parameters."""
        items = sent if isinstance(sent, list) else (sent or {}).get("events") if isinstance(sent, dict) else None
        stored: dict[tuple[str, bool], int] = {}
        ids: dict[bool, list[str]] = {False: [], True: []}
        for result in results:
            status_code = result.get("status_code", 0)
            if _stored(result, status_code):
                key = (result.get("message", UNKNOWN), bool(result.get("duplicate")))
                stored[key] = stored.get(key, 0) + 1
                ids[key[1]].append(result["event_id"])
                continue
            index = result.get("index")
            known = isinstance(items, list) and isinstance(index, int) and 0 <= index < len(items)
            _rejected_count(store, result, status_code, items[index] if known else None)
        for (message, duplicate), count in stored.items():
            event_accepted_count(store=store, message=message, duplicate=duplicate, count=count)
        if stored:
            logger.info(
                "events accepted",
                extra={
                    "store": store,
                    "event_ids": ids[False],
                    "duplicate_event_ids": ids[True],
                    "rejected": len(results) - len(ids[False]) - len(ids[True]),
                },
            )

    @staticmethod
    def request_data(response: HttpResponse) -> Any:
        """The body as the view parsed it, or None when it did not: a refused push (no token, a
        disabled store, over its rate) is counted without its body ever being read or parsed."""
        drf_request = drf_request_of(response)
        data = getattr(drf_request, "_full_data", Empty)
        return None if data is Empty else data

    @staticmethod
    def record_one(store: str, body: dict[str, Any], status_code: int, item: Any) -> None:
        if _stored(body, status_code):
            duplicate = bool(body.get("duplicate"))
            event_accepted_count(store=store, message=body.get("message", UNKNOWN), duplicate=duplicate)
            logger.info(
                "event duplicate" if duplicate else "event accepted",
                extra={"event_id": body["event_id"], "store": store, "event_message": body.get("message")},
            )
            return
        _rejected_count(store, body, status_code, item)


def _stored(body: dict[str, Any], status_code: int) -> bool:
    """Whether a push's (or a batch item's) answer says the event is stored, new or a repeat."""
    return status_code in (200, 202) and bool(body.get("event_id"))


def _rejected_count(store: str, body: dict[str, Any], status_code: int, item: Any) -> None:
    reason = body.get("error") or f"http_{status_code}"
    event_rejected_count(store=store, message=_message_label(item), reason=reason)
