"""Django's Redis cache backend, keeping its redis clients (Django builds one per operation, costly).

The cache never refuses a push: its uses fail open through `cache_available` and `cache_failed`.
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
    """False for HUB_CACHE_BACKOFF_SECONDS after a failure, so uses fail open without waiting on Redis."""
    return time.monotonic() >= cache_down_until[0]


def cache_failed(use: str, exc: BaseException) -> None:
    """A use of the cache failed and was worked around: count it, log it once, and back off."""
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

    def add_all(self, keys: list[str], value: Any, timeout: float) -> list[bool]:
        """cache.add for each key, in one round trip and one command: whether each was added."""
        expiry = self.get_backend_timeout(timeout)
        if expiry == 0:
            # Under a second: Django's add stores and deletes at once; kept as its, key by key.
            return [self.add(key, value, timeout) for key in keys]
        client = self._cache.get_client(write=True)
        stored = self._cache._serializer.dumps(value)
        names = [self.make_and_validate_key(key) for key in keys]
        added = client.eval(_ADD_ALL, len(names), *names, stored, "" if expiry is None else expiry)
        return [bool(a) for a in added]


# SET NX (EX) of each key in one command: redis-py packs a pipeline's commands one by one, which
# took more CPU than the round trip for a fan-out's twenty marks. EVAL, not EVALSHA: a script
# cache flushed or a Redis restarted would need a retry, and the text is short.
_ADD_ALL = """
local added = {}
for i, key in ipairs(KEYS) do
    if ARGV[2] == "" then
        added[i] = redis.call("SET", key, ARGV[1], "NX") and 1 or 0
    else
        added[i] = redis.call("SET", key, ARGV[1], "EX", ARGV[2], "NX") and 1 or 0
    end
end
return added
"""
