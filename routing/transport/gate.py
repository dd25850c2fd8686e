"""A fan-out's write gate: each of its threads, once its request is written, waits for the others
to have written theirs before it reads its reply. The threads share one GIL: a thread that reads
and parses its reply while others have not yet written holds their requests back, so the last one
goes out later (docs/performance.md, "Fan-out"). With the gate, the CPU goes to the writes first.

A thread outside a fan-out (a pump's) has no gate and never waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from routing.transport.deadline import watch_current

_local = threading.local()

T = TypeVar("T")


class WriteGate:
    """The threads of one fan-out, counted down as each writes its request or ends without one.
    Open once all have, or at `seconds` after it was made at the latest: a thread that is slow to
    write (connecting, a mapping to render) holds the others' replies no longer than that."""

    __slots__ = ("_done", "_left", "opens_at")

    def __init__(self, count: int, *, seconds: float) -> None:
        self._done = threading.Condition(threading.Lock())
        self._left = count
        self.opens_at = time.monotonic() + seconds

    def run(self, call: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """`call(*args, **kwargs)` as one of the gate's threads: it counts as written when it ends
        without having written (a render that failed, a connection refused, an exception)."""
        _local.gate = self
        try:
            return call(*args, **kwargs)
        finally:
            if getattr(_local, "gate", None) is self:
                _local.gate = None
                self._arrive()

    def _arrive(self) -> None:
        with self._done:
            self._left -= 1
            if self._left <= 0:
                self._done.notify_all()

    def _wait(self, until: float) -> None:
        with self._done:
            while self._left > 0:
                left = until - time.monotonic()
                if left <= 0:
                    return
                self._done.wait(left)


def gate_written() -> None:
    """This thread's request is written and its reply about to be read: counted once, then, in a
    fan-out, the wait for the others. Never past half of what is left of the exchange's deadline,
    whose watchdog shuts the socket down: a reply already there must still be read in time."""
    gate: WriteGate | None = getattr(_local, "gate", None)
    if gate is None:
        return
    _local.gate = None
    gate._arrive()
    until = gate.opens_at
    watch = watch_current()
    if watch is not None:
        until = min(until, time.monotonic() + watch.remaining() / 2)
    started = time.monotonic()
    gate._wait(until)
    _local.waited = time.monotonic() - started


def gate_waited_take() -> float:
    """The seconds this thread's last request waited at its gate, then 0: an attempt's latency is
    the endpoint's, not the time the hub held its reply unread."""
    waited = getattr(_local, "waited", 0.0)
    _local.waited = 0.0
    return waited
