"""The Redis cache backend (infra/cache.py) keeps one redis client per server instead of
building one per operation, and is still Django's cache in every other respect."""

from __future__ import annotations

import threading

import pytest
from django.core.cache import cache, caches

from infra.cache import RedisCache


@pytest.fixture(autouse=True)
def _redis_cache() -> None:
    if not isinstance(caches["default"], RedisCache):
        pytest.skip("the Redis cache (REDIS_URL set)")


def test_operations_share_one_client_and_keep_djangos_behaviour():
    first = cache._cache.get_client(write=True)
    assert cache.add("cache-test-key", {"n": 1}, timeout=30) is True
    assert cache.add("cache-test-key", {"n": 2}, timeout=30) is False  # add never overwrites
    assert cache.get("cache-test-key") == {"n": 1}
    cache.delete("cache-test-key")
    assert cache.get("cache-test-key") is None
    assert cache._cache.get_client(write=True) is first
    assert cache._cache.get_client() is first  # one server: reads and writes share it


def test_each_thread_has_its_own_backend_and_client():
    mine = caches["default"]._cache.get_client(write=True)
    theirs: list[object] = []
    thread = threading.Thread(target=lambda: theirs.append(caches["default"]._cache.get_client(write=True)))
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine
