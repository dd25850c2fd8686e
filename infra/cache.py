"""Django's Redis cache backend, keeping its redis clients.

Django's RedisCacheClient builds a new `redis.Redis` on every operation (its connection pool is
kept, the client object is not), and building one fills a case-insensitive table of ~170 reply
callbacks: 0.1-0.25 ms of CPU, more than the round trip to Redis itself. A routed push sets its
endpoint's pending mark (routing.wakeup) on every push, and every pump clears it. A redis client
is safe to share between threads, and its pool reconnects after a fork, so each pool's client
is made once. (Django's cache backends are per thread, and so are these clients.)

The cache is never what refuses a push: every use of it on the push path fails open or falls
back (a rate limit not enforced, a pending mark kept in the process only) when Redis fails,
through `cache_available` and `cache_failed` below.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache.backends import redis

logger = logging.getLogger(__name__)

# Until when (time.monotonic) this process leaves the cache alone after a failure of it.
cache_down_until = [0.0]


def cache_available() -> bool:
    """False for HUB_CACHE_BACKOFF_SECONDS after a failure of the cache: meanwhile its uses fail
    open at once instead of each waiting out Redis' connection timeout."""
    return time.monotonic() >= cache_down_until[0]


def cache_failed(use: str, exc: BaseException) -> None:
    """A use of the cache failed and was worked around: count it, say it, and leave the cache
    alone for a while (one log line per process per backoff, not one per push)."""
    from infra.metrics import redis_error_count

    redis_error_count(use)
    backoff = settings.HUB_CACHE_BACKOFF_SECONDS
    logger.warning(
        "cache unavailable; failing open",
        extra={"use": use, "error": f"{type(exc).__name__}: {exc}", "backoff_seconds": backoff},
    )
    cache_down_until[0] = time.monotonic() + backoff


class KeptClientRedisCacheClient(redis.RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        # Django keeps each server's pool for good, so a pool's id names it.
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class RedisCache(redis.RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = KeptClientRedisCacheClient
