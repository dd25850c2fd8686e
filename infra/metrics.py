"""Prometheus counters, kept by the process that saw it (docs/operations.md, "Metrics")."""

from __future__ import annotations

import bisect
import functools
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess

logger = logging.getLogger(__name__)

EVENTS_ACCEPTED = Counter("hub_events_accepted", "Events stored, by store and message.", ["store", "message"])
EVENTS_DUPLICATE = Counter(
    "hub_events_duplicate", "Pushes answered with an earlier event (same message_id).", ["store", "message"]
)
EVENTS_REJECTED = Counter(
    "hub_events_rejected", "Pushed events refused, by store, message and error code.", ["store", "message", "reason"]
)
DELIVERY_ATTEMPTS = Counter("hub_delivery_attempts", "Delivery attempts, by outcome.", ["outcome"])
DELIVERY_OUTCOMES = Counter(
    "hub_delivery_outcomes", "What deliveries became after an attempt (delivered, retrying, failed...).", ["outcome"]
)
ATTEMPT_SECONDS = Histogram(
    "hub_delivery_attempt_seconds",
    "Time of one delivery attempt (request and reply), by outcome.",
    ["outcome"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
REDIS_ERRORS = Counter(
    "hub_redis_errors",
    "Redis failures worked around, by use: rate_limit and pending_mark (the cache, failing open), "
    "publish (the broker, when it is Redis: the sweeper publishes later).",
    ["use"],
)

UNKNOWN = "-"


def event_accepted_count(*, store: str, message: str, duplicate: bool = False, count: int = 1) -> None:
    (EVENTS_DUPLICATE if duplicate else EVENTS_ACCEPTED).labels(store=store or UNKNOWN, message=message).inc(count)


def event_rejected_count(*, store: str, message: str, reason: str) -> None:
    EVENTS_REJECTED.labels(store=store or UNKNOWN, message=message or UNKNOWN, reason=reason or UNKNOWN).inc()


def attempt_observe(outcome: str, seconds: float) -> None:
    """One delivery attempt: `outcome` such as 'success', 'http_error', 'timeout', 'connection_error'."""
    attempts_observe([(outcome, seconds)])


def attempts_observe(attempts: Iterable[tuple[str, float]]) -> None:
    """Delivery attempts, each (outcome, seconds) in the order they were made: the values
    attempt_observe gives one at a time, written once per outcome's counter and bucket.

    Each write of a multiprocess value takes a lock, a getpid and a store to its file: three an
    attempt one by one were ~29 k instructions, ~3.4 k in a batch of 200. The counts are whole
    numbers, the same however they are added up; the seconds' sum is added attempt by attempt
    onto the stored value, in their order, so it ends on the very float the observations one by
    one give."""
    seconds_by_outcome: dict[str, list[float]] = {}
    for outcome, seconds in attempts:
        seconds_by_outcome.setdefault(outcome, []).append(max(0.0, seconds))
    with _attempts_lock:
        for outcome, observed in seconds_by_outcome.items():
            attempts_counter, histogram = _attempt_series(outcome)
            attempts_counter.inc(len(observed))
            # Histogram.observe's: each value in the first bucket whose bound it does not pass.
            bounds = histogram._upper_bounds
            in_bucket = [0] * len(bounds)
            total = histogram._sum.get()
            for value in observed:
                total += value
                in_bucket[bisect.bisect_left(bounds, value)] += 1
            histogram._sum.set(total)
            for bucket, count in zip(histogram._buckets, in_bucket, strict=True):
                if count:
                    bucket.inc(count)


# The sum's read and write above are one step for every writer of these series in the process (a
# fan-out's threads too): all of them come through attempts_observe.
_attempts_lock = threading.Lock()


@functools.lru_cache(maxsize=64)
def _attempt_series(outcome: str) -> tuple[Counter, Histogram]:
    # labels() takes a lock and builds its key on every call, for a child that never changes: one
    # per outcome of a small, fixed vocabulary, looked up once.
    return DELIVERY_ATTEMPTS.labels(outcome=outcome), ATTEMPT_SECONDS.labels(outcome=outcome)


def redis_error_count(use: str) -> None:
    REDIS_ERRORS.labels(use=use).inc()


def delivery_outcome_count(outcome: str, count: int = 1) -> None:
    """What `count` deliveries became after an attempt: 'delivered', 'retrying', 'failed', 'cancelled'."""
    DELIVERY_OUTCOMES.labels(outcome=outcome).inc(count)


def process_registry() -> CollectorRegistry:
    """The counters of this process, or of every process sharing PROMETHEUS_MULTIPROC_DIR."""
    if settings.PROMETHEUS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
        return registry
    return REGISTRY


def multiproc_dir_reset(path: str) -> None:
    """Values left by processes of an earlier run would be added to this run's: start clean."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob("*.db"):
        leftover.unlink(missing_ok=True)


def worker_metrics_serve(*, port: int) -> None:
    """Serve this Celery worker's counters on `port`; called in the main process before the pool forks."""
    from prometheus_client import start_http_server

    if settings.PROMETHEUS_MULTIPROC_DIR:
        if settings.HUB_METRICS_DIR_RESET:
            multiproc_dir_reset(settings.PROMETHEUS_MULTIPROC_DIR)
    else:
        logger.warning("worker metrics: PROMETHEUS_MULTIPROC_DIR is not set, so only this process is counted")
    start_http_server(port, registry=process_registry())
    logger.info("worker metrics served", extra={"port": port, "pid": os.getpid()})
