"""The two outer sides of a chaos run (bench/chaos.py): the store that pushes orders' events and
keeps what the hub answered, and the endpoint that receives them and checks each order's sequence."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Collection
from typing import Any

from tests.live import Received, Reply

# Longer than any lease a worker renews: only the hub's giving up on a dead worker frees the slot.
HELD_SECONDS = 120.0
# A store retries a push that got no answer (or a refusal), with the same message_id, this often.
PUSH_TRIES = 30


class Endpoint:
    """The subscriber's side: fails a share of requests at random, acknowledges the rest, and
    checks each order's events arrive in sequence. `held`: orders whose first request it sits on
    (HELD_SECONDS), keeping an in-flight slot taken; `healthy`: orders it never fails."""

    def __init__(
        self, failure_rate: float, *, held: Collection[str] = (), healthy: Collection[str] = (), seed: int = 7
    ) -> None:
        self.failure_rate = failure_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.acked: Counter[str] = Counter()
        # Requests per message_id, and when each message was first requested and first
        # acknowledged (wall clock, as bench/figures.py measures).
        self.requested: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}
        self.acked_at: dict[str, float] = {}
        self.next_seq: dict[str, int] = defaultdict(int)
        self.order_violations: list[str] = []
        self.held = set(held)
        self.healthy = set(healthy)
        self.holding: set[str] = set()

    def __call__(self, request: Received) -> Reply:
        body = request.json()
        message_id = body["message_id"]
        order = body["payload"]["order"]
        number, seq = order["number"], order["seq"]
        now = time.time()
        with self.lock:
            self.requests += 1
            self.requested[message_id] += 1
            self.first_seen.setdefault(message_id, now)
            if self.acked[message_id]:
                self.acked[message_id] += 1  # a duplicate: acknowledge again, as a deduplicating endpoint would
                return Reply.ok(message_id=message_id)
            if seq != self.next_seq[number]:
                self.order_violations.append(f"{number}: got {seq}, owed {self.next_seq[number]}")
            if number in self.held and number not in self.holding:
                self.holding.add(number)
                return Reply.slow(HELD_SECONDS)
            if number not in self.held | self.healthy and self.random.random() < self.failure_rate:
                return Reply.error(503)
            self.acked[message_id] += 1
            self.acked_at[message_id] = now
            self.next_seq[number] = max(self.next_seq[number], seq + 1)
        return Reply.ok(message_id=message_id)

    def delivered(self, message_ids: Collection[str]) -> int:
        """How many of `message_ids` have been acknowledged."""
        with self.lock:
            return sum(1 for m in message_ids if self.acked[m])

    def ack_times(self) -> dict[str, float]:
        with self.lock:
            return dict(self.acked_at)

    def duplicates(self) -> int:
        with self.lock:
            return sum(count - 1 for count in self.acked.values() if count > 1)


class Endpoints:
    """Several endpoints subscribed to every order (`--endpoints`), so that an event is a fan-out
    under the chaos: it is delivered once all of them have acknowledged it, and each checks its
    own order of arrival."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints

    @property
    def requests(self) -> int:
        return sum(e.requests for e in self.endpoints)

    @property
    def order_violations(self) -> list[str]:
        return [f"endpoint {n}: {v}" for n, e in enumerate(self.endpoints) for v in e.order_violations]

    def delivered(self, message_ids: Collection[str]) -> int:
        """How many of `message_ids` every endpoint has acknowledged."""
        acked = self.ack_times()
        return sum(1 for m in message_ids if m in acked)

    def ack_times(self) -> dict[str, float]:
        """When each message was acknowledged by the last of them (those all have)."""
        times = [e.ack_times() for e in self.endpoints]
        return {m: max(t[m] for t in times) for m in times[0] if all(m in t for t in times)}

    def duplicates(self) -> int:
        return sum(e.duplicates() for e in self.endpoints)


class Store:
    """The pushing side: each order's events numbered in sequence, each push retried until the
    hub accepts it (with the same message_id, as a store does), every POST's answer kept."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.lock = threading.Lock()
        self.seqs: Counter[str] = Counter()
        # Every POST: when it was sent (wall clock) and its status (0: no answer).
        self.posts: list[tuple[float, int]] = []
        # Each accepted event's message_id, and when the hub accepted it (wall clock).
        self.accepted: dict[str, float] = {}
        self.given_up: list[str] = []

    def envelope(self, number: str) -> dict[str, Any]:
        with self.lock:
            seq = self.seqs[number]
            self.seqs[number] += 1
        return {
            "message": "order:updated",
            "message_id": f"{number}-{seq}",
            "payload": {"order": {"number": number, "seq": seq}},
        }

    def _post(self, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST", headers=self.headers
        )
        sent = time.time()
        status, answer = 0, None
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, answer = response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError):
            pass
        with self.lock:
            self.posts.append((sent, status))
        return status, answer

    def push(self, number: str) -> None:
        """The order's next event, through POST /events."""
        envelope = self.envelope(number)
        for _ in range(PUSH_TRIES):
            status, _ = self._post("/events", envelope)
            if status in (200, 202):
                with self.lock:
                    self.accepted[envelope["message_id"]] = time.time()
                return
            time.sleep(0.5)
        with self.lock:
            self.given_up.append(envelope["message_id"])

    def push_many(self, number: str, count: int) -> None:
        """The order's next `count` events, in sequence, through POST /events/batch."""
        envelopes = [self.envelope(number) for _ in range(count)]
        for _ in range(PUSH_TRIES):
            status, answer = self._post("/events/batch", envelopes)
            if status == 200 and all(r["status_code"] in (200, 202) for r in answer["results"]):
                with self.lock:
                    self.accepted.update(dict.fromkeys((e["message_id"] for e in envelopes), time.time()))
                return
            time.sleep(0.5)
        with self.lock:
            self.given_up.extend(e["message_id"] for e in envelopes)

    def refused(self) -> Counter[int]:
        """The POSTs the hub answered with neither 200 nor 202, by status."""
        with self.lock:
            return Counter(status for _, status in self.posts if status and status not in (200, 202))

    def posts_between(self, start: float, end: float) -> list[int]:
        """The statuses of the POSTs sent from `start` to `end` (0: no answer)."""
        with self.lock:
            return [status for sent, status in self.posts if start <= sent <= end]


def push_for(store: Store, orders: list[str], *, until: float, rate: float, seed: int, stop: threading.Event) -> None:
    """Push events of `orders`, chosen at random, until `until` (monotonic) or `stop`: `rate` a
    second at most (0: as fast as the hub answers). Each order belongs to one such loop, as a store
    sends an order's updates one after the other: the hub then accepts them in sequence."""
    rng = random.Random(seed)
    next_at = time.monotonic()
    while time.monotonic() < until and not stop.is_set():
        store.push(rng.choice(orders))
        if rate:
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
