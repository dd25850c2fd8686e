"""A fan-out's write gate (routing.transport.gate) against the real local subscriber: its threads
read their replies only once all its requests are written; a thread slow to write, or one that
never writes, holds the others no longer than the gate's bound, and never past half of what is
left of their exchanges' deadlines.

What happens in which order is read in-process: each request's write (the connection's send) and
each reply's read (the response's begin) noted as they happen. A thread is made slow to write by
holding its render until another thread has begun to read a reply (or a test's wait is over)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import routing.fanout as fanout
import routing.send as send
from routing.fanout import deliveries_fan_out
from routing.models import Attempt
from routing.transport.kept import KeptConnectionMixin, KeptHTTPResponse
from tests.factories import DeliveryFactory, EventFactory, SubscriptionFactory
from tests.live import free_port

pytestmark = pytest.mark.django_db


class Order:
    """The writes and reads of the fan-out's requests, in the order they happened (a request on a
    new connection is two writes, its head and its body); `reading` is set at the first read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lock = threading.Lock()
        self.seen: list[str] = []
        self.reading = threading.Event()
        write, begin = KeptConnectionMixin.send, KeptHTTPResponse.begin

        def noted_write(conn: Any, data: Any) -> None:
            write(conn, data)
            self._note("write")

        def noted_begin(response: Any) -> None:
            self._note("read")
            self.reading.set()
            begin(response)

        monkeypatch.setattr(KeptConnectionMixin, "send", noted_write)
        monkeypatch.setattr(KeptHTTPResponse, "begin", noted_begin)

    def _note(self, what: str) -> None:
        with self.lock:
            self.seen.append(what)

    def writes_then_reads(self, reads: int) -> bool:
        return "write" not in self.seen[self.seen.index("read") :] and self.seen.count("read") == reads


@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> Order:
    return Order(monkeypatch)


def render_held(monkeypatch: pytest.MonkeyPatch, url: str, until: threading.Event, seconds: float) -> list[bool]:
    """The render of the request to `url` waits until `until` is set or `seconds` have passed;
    returns the list where each such wait's outcome goes (True: `until` was set)."""
    outcomes: list[bool] = []
    render = send.delivery_request

    def held(sub: Any, *args: Any, **kwargs: Any) -> Any:
        if sub.url == url:
            outcomes.append(until.wait(seconds))
        return render(sub, *args, **kwargs)

    monkeypatch.setattr(send, "delivery_request", held)
    return outcomes


def fan_out(subs: list) -> dict[int, str]:
    event = EventFactory()
    deliveries = [DeliveryFactory(event=event, subscription=sub) for sub in subs]
    return deliveries_fan_out(delivery_ids=[d.pk for d in deliveries]).verdicts


def gate_bound(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr(fanout, "_WRITE_GATE_SECONDS", seconds, raising=False)


def test_a_fan_outs_replies_are_read_once_all_its_requests_are_written(subscriber, order, monkeypatch):
    gate_bound(monkeypatch, 60.0)
    subs = [SubscriptionFactory(url=subscriber.url(f"/gate/{n}")) for n in range(5)]
    last = SubscriptionFactory(url=subscriber.url("/gate/last"))
    # Its request goes out last: once another thread reads a reply, or after a second without one.
    held = render_held(monkeypatch, last.url, order.reading, 1.0)

    verdicts = fan_out([*subs, last])

    assert set(verdicts.values()) == {"delivered"} and len(verdicts) == 6
    assert held == [False], "a reply was read before the last request was written"
    assert order.writes_then_reads(6), order.seen


def test_a_thread_slow_to_write_holds_the_others_replies_no_longer_than_the_gates_bound(subscriber, order, monkeypatch):
    # Long timeouts: the deadline's own cap on the wait (half of what is left) is a minute here.
    subs = [SubscriptionFactory(url=subscriber.url(f"/slow/{n}"), timeout_seconds=120) for n in range(4)]
    last = SubscriptionFactory(url=subscriber.url("/slow/last"), timeout_seconds=120)
    held = render_held(monkeypatch, last.url, order.reading, 30.0)

    verdicts = fan_out([*subs, last])

    assert set(verdicts.values()) == {"delivered"} and len(verdicts) == 5
    # The others read their replies while it had not written: the gate opened at its bound.
    assert held == [True]


def test_an_attempts_latency_leaves_out_the_time_its_reply_waited_at_the_gate(subscriber, order, monkeypatch):
    """The latency on record is the endpoint's: the others' replies wait the gate's whole bound
    for a thread that writes late, and that wait is the hub's, not theirs."""
    gate_bound(monkeypatch, 3.0)
    subs = [SubscriptionFactory(url=subscriber.url(f"/latency/{n}"), timeout_seconds=120) for n in range(3)]
    last = SubscriptionFactory(url=subscriber.url("/latency/last"), timeout_seconds=120)
    held = render_held(monkeypatch, last.url, order.reading, 30.0)

    verdicts = fan_out([*subs, last])

    assert set(verdicts.values()) == {"delivered"} and held == [True]
    waited = Attempt.objects.filter(delivery__subscription__in=subs)
    assert waited.count() == 3
    # Each of them waited nearly the whole 3 s bound (it counts from the fan-out's start) to read a
    # reply the subscriber sent at once: none of that wait is on record.
    assert all(attempt.latency_ms < 1500 for attempt in waited), [a.latency_ms for a in waited]


def test_the_gate_never_holds_a_reply_past_half_of_what_is_left_of_its_deadline(subscriber, order, monkeypatch):
    """A reply already there, unread at the deadline, would be cut by the watchdog and recorded as
    a timeout: the wait ends at half of what is left, however long the gate's bound."""
    gate_bound(monkeypatch, 60.0)
    subs = [SubscriptionFactory(url=subscriber.url(f"/due/{n}"), timeout_seconds=1) for n in range(3)]
    last = SubscriptionFactory(url=subscriber.url("/due/last"), timeout_seconds=1)
    held = render_held(monkeypatch, last.url, order.reading, 30.0)

    verdicts = fan_out([*subs, last])

    assert set(verdicts.values()) == {"delivered"} and len(verdicts) == 4
    assert held == [True]


def test_a_thread_that_never_writes_does_not_hold_the_others(subscriber, order, monkeypatch):
    """An endpoint that refuses the connection: its thread ends without a request written, and
    counts as written then."""
    gate_bound(monkeypatch, 60.0)
    subs = [SubscriptionFactory(url=subscriber.url(f"/refused/{n}"), timeout_seconds=120) for n in range(3)]
    refused = SubscriptionFactory(url=f"http://127.0.0.1:{free_port()}/refused", timeout_seconds=120)
    # Read beside the fan-out: whether a reply was read before the gate's bound could open it.
    read_soon: list[bool] = []
    watcher = threading.Thread(target=lambda: read_soon.append(order.reading.wait(30.0)))
    watcher.start()

    verdicts = fan_out([*subs, refused])
    watcher.join()

    assert read_soon == [True]
    assert sorted(verdicts.values()) == ["delivered"] * 3 + ["retry"]
    assert order.writes_then_reads(3), order.seen
