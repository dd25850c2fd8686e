"""Waking the workers: one broker message per endpoint with deliveries due, or one for a new event's
deliveries to several endpoints (a batch's events too, when few for their endpoints: batch_wake).

A pump message names a subscription, not a delivery: the worker that takes it sends that endpoint's due
deliveries until none is left (routing.pump). A fan-out message names the deliveries of one event
to several endpoints, which its worker sends at once (routing.fanout); what it cannot send, it
leaves to the endpoints' pumps. A pump out of time continues in the backlog lane, a second queue
the workers take from only when the first is empty (integrator/celery.py), so that one endpoint's
backlog never queues ahead of another's new deliveries; while an endpoint is marked as waiting
there, its new-work messages are dropped (its backlog pump sends those deliveries in turn).
The database is the memory of what is owed; a message
is only a wake-up, so a repeated one costs a look and a lost one is made good by the sweeper.
Published by task name, so that nothing on the way to the broker imports the tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache, caches

from infra.cache import cache_available, cache_failed
from infra.metrics import redis_error_count
from infra.ttl import TtlCache

logger = logging.getLogger(__name__)

# The task that sends an endpoint's due deliveries (routing.tasks).
PUMP_TASK = "routing.deliveries_pump"
# The task that sends one event's deliveries to several endpoints at once (routing.tasks).
FANOUT_TASK = "routing.deliveries_fan_out"

# Until when (time.monotonic) this process leaves publishing to the sweeper after a broker failure.
_broker_down_until = [0.0]
# While the cache is away, this process's own pending marks (endpoint -> until when, monotonic):
# coalescing falls back to a message per endpoint per process and HUB_PUMP_COALESCE_SECONDS, not
# one per push, which would bury the workers in messages that each cost a look.
_local_pending: TtlCache[int, bool] = TtlCache()


# The backlog lane: the queue's name with this after it (integrator/celery.py has workers take it too).
BACKLOG_SUFFIX = "-backlog"
# What a pump message is for (its `turn`): new deliveries (the main queue), or a backlog (the
# backlog lane: a pump out of time with more due, a backlog's helpers, the sweeper's lost endpoints).
TURN_NEW, TURN_LANE = "new", "lane"
# The cache's marks of an endpoint (_mark_keys): a message waiting in the main queue, the endpoint
# handed to the backlog lane, a message waiting in the lane.
PENDING_MARK, BACKLOG_MARK, WAITING_MARK = "pending", "backlog", "lane"


def backlog_queue() -> str:
    return f"{current_app.conf.task_default_queue}{BACKLOG_SUFFIX}"


def pump_begin(subscription_id: int, *, turn: str) -> bool:
    """A pump message is taken: whether to pump. A new-work message for an endpoint marked as
    handed to the backlog lane is dropped, its pending mark left to expire so that pushes
    meanwhile publish nothing: the lane's pump takes the endpoint's due deliveries oldest first,
    these among them. Else the endpoint's pending mark is cleared (pump_started), and a lane
    message's waiting mark, so that the next hand-on may publish one."""
    if turn == TURN_NEW and _backlog_marked(subscription_id):
        return False
    pump_started(subscription_id)
    if turn != TURN_NEW:
        _marks_delete(_mark_keys(WAITING_MARK, [subscription_id]), "backlog_mark")
    return True


def _backlog_marked(subscription_id: int) -> bool:
    if not cache_available():
        return False
    try:
        return cache.get(_mark_keys(BACKLOG_MARK, [subscription_id])[0]) is not None
    except Exception as exc:  # noqa: BLE001 - without the mark the message pumps, as before lanes
        cache_failed("backlog_mark", exc)
        return False


def _backlog_mark(subscription_ids: Sequence[int]) -> None:
    """The mark expires after HUB_SWEEP_LOST_AFTER_SECONDS, what a lost message costs anyway."""
    if not cache_available():
        return
    try:
        marks = dict.fromkeys(_mark_keys(BACKLOG_MARK, subscription_ids), 1)
        cache.set_many(marks, timeout=settings.HUB_SWEEP_LOST_AFTER_SECONDS)
    except Exception as exc:  # noqa: BLE001 - unmarked, new-work messages pump alongside
        cache_failed("backlog_mark", exc)


def _marks_delete(keys: list[str], use: str) -> None:
    if not keys or not cache_available():
        return
    try:
        if len(keys) == 1:
            cache.delete(keys[0])
        else:
            cache.delete_many(keys)
    except Exception as exc:  # noqa: BLE001 - a mark only saves messages; its expiry ends it anyway
        cache_failed(use, exc)


def backlog_unmark(subscription_ids: Sequence[int]) -> None:
    """The endpoints' handed-on pump is done (or its message was never published). The caller looks
    once more for due deliveries afterwards: one whose message was dropped while the mark was set
    is this pump's to send."""
    _marks_delete(_mark_keys(BACKLOG_MARK, subscription_ids), "backlog_mark")


def _mark_keys(kind: str, subscription_ids: Sequence[int]) -> list[str]:
    # Per queue: two hubs (or a hub and its benchmark) may share one Redis. The queue read once: a
    # lookup in Celery's settings costs more than making the key.
    queue = current_app.conf.task_default_queue
    return [f"pump-{kind}:{queue}:{i}" for i in subscription_ids]


def pump_started(subscription_id: int) -> None:
    """A worker is about to look at the endpoint: whatever is committed from now on, it may miss,
    so the next push must publish again (see pumps_enqueue's `coalesce`)."""
    pumps_started([subscription_id])


def pumps_started(subscription_ids: Sequence[int]) -> None:
    """pump_started for several endpoints (a fan-out's), in one cache round trip."""
    for subscription_id in subscription_ids:
        _local_pending.discard(subscription_id)
    if settings.HUB_PUMP_COALESCE_SECONDS > 0:
        _marks_delete(_mark_keys(PENDING_MARK, subscription_ids), "pending_mark")


def _newly_pending(subscription_ids: list[int]) -> list[int]:
    """Those of the endpoints that had no message on its way, now marked pending: the others' waiting
    message will be looked at after what was just committed, so another would only cost a look.
    The mark (Redis SET NX, or the file cache of the embedded default) expires after
    HUB_PUMP_COALESCE_SECONDS, so a lost message costs no more than that before pushes publish
    again. On Redis the marks of a fan-out take one round trip, not one per endpoint: its first
    message goes out that much sooner."""
    added = _marks_add(_mark_keys(PENDING_MARK, subscription_ids), settings.HUB_PUMP_COALESCE_SECONDS, "pending_mark")
    if added is None:
        return [i for i in subscription_ids if not _already_pending_locally(i)]
    return [i for i, new in zip(subscription_ids, added, strict=True) if new]


def _newly_waiting(subscription_ids: list[int]) -> list[int]:
    """Those of the endpoints with no message waiting in the backlog lane, now marked: one waits
    at a time, or every pump's hand-on and a backlog's full batches would add to the lane for good
    under a flood (docs/reliability.md). The mark is taken off when the message is; it expires
    after HUB_SWEEP_LOST_AFTER_SECONDS, what a lost message costs anyway."""
    keys = _mark_keys(WAITING_MARK, subscription_ids)
    added = _marks_add(keys, settings.HUB_SWEEP_LOST_AFTER_SECONDS, "backlog_mark")
    if added is None:
        return subscription_ids
    return [i for i, new in zip(subscription_ids, added, strict=True) if new]


def _marks_add(keys: list[str], timeout: float, use: str) -> list[bool] | None:
    """cache.add of each key (in one round trip on Redis): whether each was added; None without
    the cache."""
    if not cache_available():
        return None
    try:
        add_all = getattr(caches["default"], "add_all", None)
        if add_all is not None and len(keys) > 1:
            return add_all(keys, 1, timeout)
        return [cache.add(key, 1, timeout=timeout) for key in keys]
    except Exception as exc:  # noqa: BLE001 - no cache: the caller's fallback
        cache_failed(use, exc)
        return None


def _already_pending_locally(subscription_id: int) -> bool:
    """The mark kept in this process only. No worker clears it, so a push in its last moments may
    wait for the next push's message (or the sweeper) instead of its own: the price of no cache."""
    return not _local_pending.add(subscription_id, True, settings.HUB_PUMP_COALESCE_SECONDS)


def deliveries_wake(deliveries: Sequence[tuple[int, int]]) -> list[tuple[str, list[Any]]]:
    """New deliveries of one event, (delivery, endpoint) pairs, once committed (or each endpoint's
    oldest due one, once a fan-out is done: routing.fanout). Those to endpoints with no message
    waiting (the pending marks, as pumps_enqueue's `coalesce`) go out in one fan-out message per
    HUB_FANOUT_MAX_ENDPOINTS of them (split evenly), instead of a pump message each: one worker
    sends them at once. One such endpoint alone, or fan-out off, gets a pump message.
    Returns the messages published, (task, arguments).

    The fan-out's task clears the marks when it starts, and wakes the endpoints it leaves
    something due at: a push coalesced into its message meanwhile goes out then."""
    size = settings.HUB_FANOUT_MAX_ENDPOINTS
    endpoints = list(dict.fromkeys(s for _, s in deliveries))
    if size < 2 or len(endpoints) < 2 or len(endpoints) != len(deliveries):
        return [(PUMP_TASK, [i]) for i in pumps_enqueue(endpoints, coalesce=True)]
    if time.monotonic() < _broker_down_until[0]:
        return []
    wanted = set(_newly_pending(endpoints) if settings.HUB_PUMP_COALESCE_SECONDS > 0 else endpoints)
    return _messages_publish(_event_messages([d for d in deliveries if d[1] in wanted]))


def batch_wake(deliveries: Sequence[tuple[int, int, int]]) -> list[tuple[str, list[Any]]]:
    """New deliveries of several events (a batch, or pushes committed together), (event, delivery,
    endpoint) triples, once committed. A pump sends all of its endpoint's deliveries of the batch
    on one claim and one commit, a fan-out one event's on one claim and one commit: so a pump
    message per endpoint, unless the events are at most half as many as the endpoints, when each
    event's deliveries go out as deliveries_wake sends them (measured: a fan-out per event took
    0.7-0.9x the pumps' CPU for 2-3 events to 5-10 endpoints, the same at 10 to 20, 1.3-2.4x from
    4 to 5 on). Each endpoint is marked pending once; one with a message waiting gets none."""
    by_event: dict[int, list[tuple[int, int]]] = {}
    for event_id, delivery_id, subscription_id in deliveries:
        by_event.setdefault(event_id, []).append((delivery_id, subscription_id))
    endpoints = list(dict.fromkeys(s for _, _, s in deliveries))
    if settings.HUB_FANOUT_MAX_ENDPOINTS < 2 or 2 * len(by_event) > len(endpoints):
        return [(PUMP_TASK, [i]) for i in pumps_enqueue(endpoints, coalesce=True)]
    if time.monotonic() < _broker_down_until[0]:
        return []
    wanted = set(_newly_pending(endpoints) if settings.HUB_PUMP_COALESCE_SECONDS > 0 else endpoints)
    messages: list[tuple[str, list[Any]]] = []
    pumped: set[int] = set()
    for pairs in by_event.values():
        for message in _event_messages([d for d in pairs if d[1] in wanted]):
            # An endpoint that has its pump's message already needs no second one.
            if message[0] == PUMP_TASK:
                if message[1][0] in pumped:
                    continue
                pumped.add(message[1][0])
            messages.append(message)
    return _messages_publish(messages)


def _event_messages(deliveries: list[tuple[int, int]]) -> list[tuple[str, list[Any]]]:
    """One event's deliveries, (delivery, endpoint) pairs: as few fan-out messages as
    HUB_FANOUT_MAX_ENDPOINTS allows, as even as can be (each is a worker process's); a share of one
    is its endpoint's pump message."""
    if not deliveries:
        return []
    size = max(settings.HUB_FANOUT_MAX_ENDPOINTS, 1)
    count = len(deliveries)
    parts = -(-count // size)
    chunks = [deliveries[part * count // parts : (part + 1) * count // parts] for part in range(parts)]
    # The endpoints too: the task clears their marks before it looks.
    return [
        (PUMP_TASK, [chunk[0][1]]) if len(chunk) == 1 else (FANOUT_TASK, [[d for d, _ in chunk], [s for _, s in chunk]])
        for chunk in chunks
    ]


def _messages_publish(messages: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
    """Publish in order until the broker fails; those published. On a failure the endpoints of the
    rest have their marks cleared, so that the next push tries again; they are listed only then
    (once per publish, it was quadratic in the messages)."""
    published: list[tuple[str, list[Any]]] = []
    for at, (task, args) in enumerate(messages):
        if not _publish(task, args):
            rest = [s for t, a in messages[at:] for s in (a if t == PUMP_TASK else a[1])]
            pumps_started(list(dict.fromkeys(rest)))
            break
        published.append((task, args))
    return published


def _publish(task: str, args: list[Any]) -> bool:
    """One message; on a broker failure, back off (the sweeper publishes later)."""
    try:
        current_app.send_task(task, args=args)
    except Exception:  # noqa: BLE001 - any broker failure; the database still holds the deliveries
        logger.warning("broker unavailable; deliveries left for the sweeper", extra={"task": task, "task_args": args})
        if str(current_app.conf.broker_url or "").startswith(("redis://", "rediss://")):
            redis_error_count("publish")
        _broker_down_until[0] = time.monotonic() + settings.HUB_BROKER_BACKOFF_SECONDS
        return False
    return True


def pumps_enqueue(
    subscription_ids: Iterable[int], *, countdown: float | None = None, coalesce: bool = False, turn: str = TURN_NEW
) -> list[int]:
    """Ask the workers to send these endpoints' due deliveries; returns the ids actually published.

    With `coalesce` (new deliveries, at once) an endpoint whose message is still waiting for a
    worker gets none: under a steady stream of pushes to one endpoint that is most of them.
    TURN_LANE goes to the backlog lane, one message waiting there per endpoint, and marks the
    endpoints as handed to it (pump_begin), a mark their lane pump takes off when done. A broker outage
    is not the store's problem: the deliveries are durable and the sweeper wakes their endpoints
    once the broker is back."""
    ids = list(dict.fromkeys(subscription_ids))
    if not ids or time.monotonic() < _broker_down_until[0]:
        # Right after a broker failure, trying again would make every push wait out the broker
        # client's connection attempts; the sweeper publishes for these endpoints later.
        return []
    if coalesce and not countdown and settings.HUB_PUMP_COALESCE_SECONDS > 0:
        ids = _newly_pending(ids)
    lane: dict[str, Any] = {}
    if turn != TURN_NEW and ids:
        # Marked before publishing: marked after, a lane pump that ran and ended in between would
        # leave a mark that drops new-work messages with no pump behind it. A hand-on whose
        # endpoint has a message waiting already marks it too: that message's pump unmarks.
        _backlog_mark(ids)
        ids = _newly_waiting(ids)
        lane = {"queue": backlog_queue(), "kwargs": {"turn": TURN_LANE}}
    published: list[int] = []
    for subscription_id in ids:
        try:
            current_app.send_task(PUMP_TASK, args=[subscription_id], countdown=countdown or None, **lane)
        except Exception:  # noqa: BLE001 - any broker failure; the database still holds the deliveries
            logger.warning(
                "broker unavailable; deliveries left for the sweeper", extra={"subscription_id": subscription_id}
            )
            if str(current_app.conf.broker_url or "").startswith(("redis://", "rediss://")):
                redis_error_count("publish")
            _broker_down_until[0] = time.monotonic() + settings.HUB_BROKER_BACKOFF_SECONDS
            if coalesce:
                # Marked pending but never published: let the next push try again.
                for unpublished in ids[len(published) :]:
                    pump_started(unpublished)
            if turn != TURN_NEW:
                unpublished = ids[len(published) :]
                _marks_delete(_mark_keys(WAITING_MARK, unpublished), "backlog_mark")
                backlog_unmark(unpublished)
            break
        published.append(subscription_id)
    return published
