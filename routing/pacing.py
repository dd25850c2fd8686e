"""How many deliveries a pump's next batch of an endpoint takes: as many as the endpoint's recent
time per request fits into what is left of the pump's budget, from 1 to HUB_DELIVERY_BATCH_SIZE.

An instant endpoint gets full batches (a claim and a record cost about as much for many as for
few); a slow one gets what it can be sent before the budget, so none of its batch is claimed only
to be given back unsent. The time per request is each process's own memory of the endpoint (the
slowest recent batch's, easing back as faster ones follow; a fan-out's request counts as a batch of
one), kept without a query or a write.

A process that has not sent to the endpoint yet takes a full batch: most endpoints answer in
milliseconds, and a slow one's first batch gives back what the budget could not send once per
process, not every pump. A first batch of one would cost every endpoint a claim and a record more
per process, and split what belongs in one batch (a batch push's deliveries, whose replies'
parameters go with the next request).
"""

from __future__ import annotations

import math
import threading

from django.conf import settings

from routing.perprocess import PerProcess

# Each faster request's weight as the pace eases back: ten of them make up ~90 % of it.
_WEIGHT = 0.2
# Endpoints remembered per process; past that the least recently sent to is forgotten.
_REMEMBERED = 4096


class _Paces:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Seconds a request, by subscription id, the most recently sent to last.
        self.seconds: dict[int, float] = {}


_paces = PerProcess(lambda: _Paces()).get


def batch_size(subscription_id: int, *, remaining: float) -> int:
    """The deliveries a batch claimed now should hold with `remaining` seconds of the pump's
    budget left (HUB_DELIVERY_BATCH_SIZE when this process has not sent to the endpoint yet)."""
    seconds = _paces().seconds.get(subscription_id)
    cap = settings.HUB_DELIVERY_BATCH_SIZE
    if seconds is None or seconds <= 0:
        return cap
    # The first request goes whatever is left, so a batch is never less than one.
    return max(1, min(cap, math.floor(max(remaining, 0) / seconds)))


def batch_sent(subscription_id: int, *, seconds: float, requests: int) -> None:
    """A batch's `requests` took `seconds` to send, failures and timeouts included (the time they
    took is what the budget spent on them).

    A batch slower than the pace sets it at once: the next claim takes no more than that time fits.
    A faster one comes in as an average, each request one step of it, so a batch of many soon
    replaces the past: taking too few costs a claim and a record more, too many a batch given back."""
    if requests < 1:
        return
    paces = _paces()
    each = seconds / requests
    with paces.lock:
        before = paces.seconds.pop(subscription_id, None)
        if before is None or each >= before:
            paces.seconds[subscription_id] = each
        else:
            kept = (1 - _WEIGHT) ** requests
            paces.seconds[subscription_id] = kept * before + (1 - kept) * each
        if len(paces.seconds) > _REMEMBERED:
            del paces.seconds[next(iter(paces.seconds))]


def paces_forget() -> None:
    """Forget every endpoint's time per request (tests)."""
    paces = _paces()
    with paces.lock:
        paces.seconds.clear()
