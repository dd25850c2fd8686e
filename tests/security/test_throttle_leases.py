"""The shared sliding log admitting a busy store's requests in leases (events.throttling.Leases),
against the real Redis: fewer round trips, never more than the limit, a quiet store counted one by
one."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings as django_settings
from django.core.cache import caches

from events.throttling import LEASE_MAX, LEASE_SECONDS, Leases
from tests.factories import StoreFactory

pytestmark = pytest.mark.skipif(not django_settings.REDIS_URL, reason="leases are for the Redis cache")

ENVELOPE = {"message": "order:new", "payload": {"order": {"number": "R1"}}}


@pytest.fixture
def log_key() -> Iterator[tuple[str, Callable[[], list[tuple[str, float]]]]]:
    """A fresh sorted-set key, and a reader of its (member, score) entries."""
    cache = caches["default"]
    key = cache.make_and_validate_key(f"test_throttle_log_{uuid.uuid4().hex}")
    client = cache._cache.get_client(key, write=True)
    yield key, lambda: [(m.decode(), s) for m, s in client.zrange(key, 0, -1, withscores=True)]
    client.delete(key)


def calls(entries: list[tuple[str, float]]) -> set[str]:
    """The script calls that wrote these entries: each names its entries '<call>:<n>'."""
    return {member.rsplit(":", 1)[0] for member, _ in entries}


def redis_now_us() -> int:
    seconds, micros = caches["default"]._cache.get_client(write=True).time()
    return seconds * 1_000_000 + micros


def test_a_busy_store_is_admitted_in_leases_with_fewer_round_trips(log_key):
    key, entries = log_key
    leases = Leases()
    before = redis_now_us()
    assert all(leases.admit(caches["default"], key, 1_000_000, 1.0) is None for _ in range(500))
    stored = entries()
    # Every request admitted has its entry (what a lease leaves unused is counted too), and the
    # leases grew from one request (up to LEASE_MAX): far fewer calls than requests.
    assert len(stored) >= 500
    assert len(calls(stored)) < 500 / 4
    sizes = [sum(1 for m, _ in stored if m.rsplit(":", 1)[0] == call) for call in calls(stored)]
    assert min(sizes) == 1
    assert 16 <= max(sizes) <= LEASE_MAX
    # A lease of several is dated ahead, to its end; one of one, at its call. Every call came
    # between `before` and `after`: bounds that hold however long this thread is kept off the CPU.
    after = redis_now_us()
    ahead = LEASE_SECONDS * 1_000_000
    for call in calls(stored):
        scores = {score for m, score in stored if m.rsplit(":", 1)[0] == call}
        assert len(scores) == 1, (call, scores)
        score = scores.pop()
        if sum(1 for m, _ in stored if m.rsplit(":", 1)[0] == call) > 1:
            assert score >= before + ahead, call
        else:
            assert before <= score <= after, call


def test_threads_sharing_leases_never_overrun_the_limit(log_key):
    key, entries = log_key
    leases = Leases()
    limit, window = 2000, 10.0  # leases of up to 10 requests (limit x 50 ms / window)
    admitted: list[int] = []

    def push() -> None:
        admitted.append(sum(leases.admit(caches["default"], key, limit, window) is None for _ in range(800)))

    threads = [threading.Thread(target=push) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) <= limit
    # The window is full: near the limit each call admits at most a quarter of what is left, so
    # leases left unused at the end hold back few requests.
    assert len(entries()) == limit
    assert sum(admitted) >= limit * 0.95
    assert len(calls(entries())) < limit / 2


def test_a_store_within_the_default_rate_is_counted_one_request_per_call(log_key):
    key, entries = log_key
    leases = Leases()
    # 600/minute is a third of a request per 50 ms: every lease is of one request, dated now.
    for _ in range(5):
        assert leases.admit(caches["default"], key, 600, 60.0) is None
    stored = entries()
    assert len(stored) == 5
    assert len(calls(stored)) == 5
    assert max(score for _, score in stored) <= redis_now_us()


def test_a_refusal_is_remembered_until_the_window_frees(log_key):
    key, entries = log_key
    leases = Leases()
    cache = caches["default"]
    assert [leases.admit(cache, key, 2, 60.0) for _ in range(2)] == [None, None]
    wait = leases.admit(cache, key, 2, 60.0)
    assert wait is not None and 59 < wait <= 60
    # The window cannot free before the oldest entry leaves it, so the process does not ask Redis
    # again until then: with the log gone, it still refuses, with the wait counting down.
    cache._cache.get_client(key, write=True).delete(key)
    again = leases.admit(cache, key, 2, 60.0)
    assert again is not None and again <= wait
    assert entries() == []


def test_a_changed_limit_is_a_new_lease(log_key):
    key, _ = log_key
    leases = Leases()
    cache = caches["default"]
    assert leases.admit(cache, key, 1, 60.0) is None
    assert leases.admit(cache, key, 1, 60.0) is not None
    # The refusal was for a limit of 1; at 3 the same window has room.
    assert leases.admit(cache, key, 3, 60.0) is None


@pytest.mark.django_db
def test_pushes_of_a_busy_store_share_leases(settings, client_for):
    settings.HUB_RATE_LIMITS = {"store_write": "100000/second", "store_read": "100000/second"}
    store = StoreFactory()
    client = client_for(store)
    for _ in range(30):
        assert client.post("/events", ENVELOPE, format="json").status_code == 202
    cache = caches["default"]
    ident = f"{store.pk}-{int(store.created_at.timestamp() * 1_000_000)}"
    key = cache.make_and_validate_key(f"throttle_log_store_write_{ident}")
    members = [m.decode() for m in cache._cache.get_client(key).zrange(key, 0, -1)]
    assert len(members) >= 30
    assert len(calls([(m, 0.0) for m in members])) < 30
    assert store.events.count() == 30
