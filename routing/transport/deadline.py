"""A wall-clock deadline over one HTTP exchange: connect, send, status line, headers and body.

A socket timeout bounds each read, not the exchange: an endpoint that sends a byte now and then
(in its headers or its body) keeps every read short and the exchange alive for as long as it
likes, holding a worker and outliving the delivery's lease. So each exchange runs under a Watch,
and one watchdog thread per process shuts the watched socket down when its deadline passes: the
blocked read or write returns at once, and the caller, seeing `expired`, records the deadline.

The delivery session's connections (routing.transport.netguard mounts DeadlineConnectionMixin on them)
hand their socket to the thread's current watch before every request, and a new connection
dials with no more time than is left. Outside a watch they behave as plain urllib3 connections.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from urllib3.exceptions import ConnectTimeoutError

from routing.perprocess import PerProcess

_local = threading.local()


class Watch:
    """One exchange's deadline and the sockets it may shut down."""

    __slots__ = ("seconds", "deadline", "expired", "_dog", "_sockets", "_owned", "_ended")

    def __init__(self, seconds: float) -> None:
        self._dog = _watchdog()
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        # Set by the watchdog, under its lock, before it shuts the sockets down.
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._owned: list[socket.socket] = []
        self._ended = False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def watching(self) -> bool:
        return bool(self._sockets)

    def attach(self, sock: socket.socket, *, owned: bool = False) -> None:
        """Shut `sock` down at the deadline (at once if it has passed). `owned`: a duplicate this
        watch closes when it ends."""
        with self._dog.lock:
            if self._ended:
                if owned:
                    sock.close()
                return
            if owned:
                self._owned.append(sock)
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def end(self) -> bool:
        """Stop watching, before the connection can go back to the pool (another thread's request
        may use it next); whether the deadline had passed. Idempotent."""
        if not self._ended:
            with self._dog.lock:
                self._ended = True
                self._dog.forget(self)
            self._sockets.clear()
            for sock in self._owned:
                sock.close()
            self._owned.clear()
        return self.expired


def _shutdown(sock: socket.socket) -> None:
    # The plain socket's shutdown even for a TLS socket: the blocked SSL read fails at once, and
    # the TLS object the sending thread is using is left alone. A closed socket raises, harmlessly.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """One daemon thread that sleeps until the earliest deadline of the exchanges in progress."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._wakeup = threading.Condition(self.lock)
        self._watches: set[Watch] = set()
        # When the thread will look next; a deadline earlier than this wakes it.
        self._wake_at = math.inf
        threading.Thread(target=self._run, name="hub-deadline-watchdog", daemon=True).start()

    def watch(self, watch: Watch) -> None:
        with self.lock:
            self._watches.add(watch)
            if watch.deadline < self._wake_at:
                self._wake_at = watch.deadline
                self._wakeup.notify()

    def forget(self, watch: Watch) -> None:
        # Called under self.lock. The thread is not woken: it finds nothing due and sleeps on.
        self._watches.discard(watch)

    def _run(self) -> None:
        with self.lock:
            while True:
                now = time.monotonic()
                for watch in [w for w in self._watches if w.deadline <= now]:
                    watch.expired = True
                    self._watches.discard(watch)
                    for sock in watch._sockets:
                        _shutdown(sock)
                self._wake_at = min((w.deadline for w in self._watches), default=math.inf)
                self._wakeup.wait(None if self._wake_at == math.inf else self._wake_at - now)


_watchdog = PerProcess(lambda: _Watchdog()).get


@contextmanager
def deadline_watch(seconds: float) -> Iterator[Watch]:
    """Run an exchange of this thread under a deadline `seconds` from now."""
    watch = Watch(seconds)
    watch._dog.watch(watch)
    _local.watch = watch
    try:
        yield watch
    finally:
        _local.watch = None
        watch.end()


def watch_current() -> Watch | None:
    return getattr(_local, "watch", None)


class DeadlineConnectionMixin:
    """For urllib3 connection classes: the thread's current watch gets the connection's socket."""

    sock: socket.socket | None
    timeout: Any

    def _new_conn(self) -> socket.socket:
        watch = watch_current()
        if watch is None:
            return super()._new_conn()  # type: ignore[misc]
        remaining = watch.remaining()
        if remaining <= 0:
            raise ConnectTimeoutError(self, f"no time left to connect within {watch.seconds:g}s")
        # Each address tried gets no more than what is left, so connecting ends by the deadline.
        if not isinstance(self.timeout, (int, float)) or self.timeout > remaining:
            self.timeout = remaining
        sock = super()._new_conn()  # type: ignore[misc]
        # A duplicate: a TLS handshake detaches the socket object it wraps, and a handshake that
        # trickles must be cut too.
        watch.attach(sock.dup(), owned=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = watch_current()
        if watch is not None and self.sock is not None and not watch.watching():
            watch.attach(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]
