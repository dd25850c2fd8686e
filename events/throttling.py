"""Per-store rate limits, counted in Django's cache (Redis in production) so that every web worker
shares one count."""

from __future__ import annotations

import os
import threading
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from events.models import Store

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# DRF's sliding log (every request's time within the window; refuse when the window holds the
# limit), kept in a Redis sorted set and checked and updated by one script: one round trip per
# request instead of DRF's GET and SET, and no list of timestamps pickled back and forth (at the
# default 600/minute that list is up to 600 floats, written on every push). The time is Redis'
# own, so web hosts with skewed clocks still share one window. Returns -1 when the request is let
# through, else the microseconds until the oldest request in the window leaves it.
SLIDING_LOG_SCRIPT = """
local key, limit, window = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil(window / 1000))
  return -1
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return math.max(0, tonumber(oldest[2]) + window - now)
"""

_local = threading.local()


def _sliding_log(cache: RedisCache) -> Any:
    """The registered script, made once per thread and cache: Django's RedisCache builds a new
    redis client object on every call (a fifth of a millisecond here), the script keeps one."""
    if getattr(_local, "cache", None) is not cache:
        client = cache._cache.get_client(write=True)
        _local.script = client.register_script(SLIDING_LOG_SCRIPT)
        _local.cache = cache
    return _local.script


class StoreRateThrottle(SimpleRateThrottle):
    """One bucket per store and scope: `store_write` for pushes, `store_read` for reads.

    Rates come from settings.HUB_RATE_LIMITS, read per request rather than at import as DRF's
    default does, so that a changed setting takes effect without a restart of the class.
    With Redis as the cache the count is one script (SLIDING_LOG_SCRIPT); with any other cache
    (the embedded file cache) it is DRF's own implementation, with the same rule.
    """

    cache_format = "throttle_%(scope)s_%(ident)s"
    log_format = "throttle_log_%(scope)s_%(ident)s"

    def __init__(self) -> None:
        # The scope depends on the request's method, so the rate is resolved in allow_request.
        self.rate = None
        self.num_requests, self.duration = None, None
        self._wait: float | None = None

    def allow_request(self, request: Request, view: object) -> bool:
        self.scope = "store_read" if request.method in SAFE_METHODS else "store_write"
        self.rate = settings.HUB_RATE_LIMITS.get(self.scope) or None
        self.num_requests, self.duration = self.parse_rate(self.rate)
        backend = caches["default"]
        if self.rate is None or not isinstance(backend, RedisCache):
            return super().allow_request(request, view)
        ident = self.store_ident(request)
        if ident is None:
            return True
        key = backend.make_and_validate_key(self.log_format % {"scope": self.scope, "ident": ident})
        # A member unique to this request: two requests in the same microsecond are two entries.
        member = os.urandom(8).hex()
        wait_us = _sliding_log(backend)(keys=[key], args=[self.num_requests, self.duration * 1_000_000, member])
        if wait_us < 0:
            return True
        self._wait = wait_us / 1_000_000
        return False

    def wait(self) -> float | None:
        if self._wait is not None:
            return self._wait
        return super().wait()

    @staticmethod
    def store_ident(request: Request) -> str | None:
        store = request.user
        if not isinstance(store, Store):
            return None
        # created_at is part of the identity: a test database (or SQLite after a delete) can hand a
        # store id to a new store, which must not inherit an old store's history.
        return f"{store.pk}-{int(store.created_at.timestamp() * 1_000_000)}"

    def get_cache_key(self, request: Request, view: object) -> str | None:
        ident = self.store_ident(request)
        if ident is None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": ident}
