"""Per-store rate limits, counted in Django's cache (Redis in production) so that every web worker
shares one count."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from events.models import Store
from infra.cache import cache_available, cache_failed

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# DRF's sliding log (every request's time within the window; refuse when the window holds the
# limit), kept in a Redis sorted set and checked and updated by one script: one round trip instead
# of DRF's GET and SET, and no list of timestamps pickled back and forth. The time is Redis' own,
# so web hosts with skewed clocks still share one window.
#
# ARGV: limit, window (µs), a member prefix unique to the call, how many requests to admit
# (a lease, see Leases), and how far ahead (µs) to date the entries of a lease of more than one:
# to its end, the latest moment one of them can be used, so that no admitted request leaves the
# window before it should. Returns {admitted, 0} with 1 <= admitted <= asked, or {0, µs until the
# oldest entry leaves the window}. Near the limit it admits at most a quarter of what is left, so
# that requests left unused in other processes' leases hold back little of the window.
SLIDING_LOG_SCRIPT = """
local key, limit, window = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local ask, ahead = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local free = limit - redis.call('ZCARD', key)
if free > 0 then
  local admitted = math.min(ask, math.max(1, math.floor(free / 4)))
  local score = now
  if admitted > 1 then score = now + ahead end
  local entries = {}
  for i = 1, admitted do
    entries[2 * i - 1] = score
    entries[2 * i] = ARGV[3] .. ':' .. i
  end
  redis.call('ZADD', key, unpack(entries))
  redis.call('PEXPIRE', key, math.ceil((window + ahead) / 1000))
  return {admitted, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, math.max(0, tonumber(oldest[2]) + window - now)}
"""

# A lease lasts at most this long, and at most a twentieth of the limit's window: its entries are
# dated to its end, so at the limit a busy store gets up to half a lease's time less of a window.
LEASE_SECONDS = 0.05
# The most requests one lease admits.
LEASE_MAX = 64

_local = threading.local()


def _sliding_log(cache: RedisCache) -> Any:
    """The registered script (its client and SHA), made once per thread and cache: Django's own
    RedisCache builds a new redis client object on every call (infra/cache.py keeps them),
    and this works with either."""
    if getattr(_local, "cache", None) is not cache:
        client = cache._cache.get_client(write=True)
        _local.script = client.register_script(SLIDING_LOG_SCRIPT)
        _local.cache = cache
    return _local.script


@dataclass
class _Lease:
    left: int = 0  # requests this process may still admit without asking Redis
    admitted: int = 0  # how many Redis admitted for this lease
    expires: float = 0.0  # time.monotonic()
    blocked_until: float = 0.0  # after a refusal: the window is full until then


class Leases:
    """Requests admitted by the shared sliding log in small batches, one Redis round trip for
    several requests of a busy store instead of one for each: the round trip was a large share of
    a push's cost.

    A lease is as large as the store's demand in this process showed itself to be: one request at
    first, twice the last lease when that was used up before it ended, what was used of it when
    it ended with some left; never more than LEASE_MAX, nor more than the limit allows in a
    lease's time. So a store pushing well within its limits always asks for one, and is counted
    exactly as before. The window is never
    overrun: every request admitted has its entry in the log, dated no earlier than its use; what
    a lease leaves unused when it ends is counted without being used. A refusal is remembered
    until the oldest entry leaves the window, which no other request can make sooner.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[tuple[str, int, int], _Lease] = {}

    def clear(self) -> None:
        with self._lock:
            self._leases.clear()

    def admit(self, cache: RedisCache, key: str, limit: int, window: float) -> float | None:
        """None when the request is admitted, else the seconds to wait."""
        seconds = min(LEASE_SECONDS, window / 20)
        most = max(1, min(LEASE_MAX, int(limit * seconds / window)))
        slot = (key, limit, int(window * 1_000_000))
        now = time.monotonic()
        with self._lock:
            lease = self._leases.get(slot)
            if lease is None:
                ask = 1
            elif now < lease.expires and lease.left > 0:
                lease.left -= 1
                return None
            elif now < lease.blocked_until:
                return lease.blocked_until - now
            elif now < lease.expires:
                ask = min(most, 2 * lease.admitted)  # used up before it ended
            else:
                ask = min(most, max(1, lease.admitted - lease.left))
        # A member prefix unique to this call: two calls in the same microsecond are two entries.
        admitted, wait_us = _sliding_log(cache)(
            keys=[key],
            args=[limit, int(window * 1_000_000), os.urandom(8).hex(), ask, int(seconds * 1_000_000)],
        )
        with self._lock:
            if len(self._leases) > 10_000:
                self._prune(now)
            held = self._leases.get(slot)
            # Another thread's lease may have come back meanwhile: what it left stays usable.
            holding = held is not None and time.monotonic() < held.expires and held.left > 0
            if admitted and holding:
                # The earlier end of the two for both: no request is used after its entry's date.
                held.expires = min(held.expires, now + seconds)
                held.left += admitted - 1
                held.admitted += admitted
            elif admitted:
                self._leases[slot] = _Lease(left=admitted - 1, admitted=admitted, expires=now + seconds)
            elif holding:
                held.blocked_until = now + wait_us / 1_000_000
            else:
                self._leases[slot] = _Lease(blocked_until=now + wait_us / 1_000_000)
            return None if admitted else wait_us / 1_000_000

    def _prune(self, now: float) -> None:
        for slot in [s for s, lease in self._leases.items() if lease.expires < now and lease.blocked_until < now]:
            del self._leases[slot]


leases = Leases()


class StoreRateThrottle(SimpleRateThrottle):
    """One bucket per store and scope: `store_write` for pushes, `store_read` for reads.

    Rates come from settings.HUB_RATE_LIMITS, read per request rather than at import as DRF's
    default does, so that a changed setting takes effect without a restart of the class.
    With Redis as the cache the count is one script (SLIDING_LOG_SCRIPT) admitting requests in
    leases (Leases); with any other cache (the embedded file cache) it is DRF's own
    implementation, with the same rule. When Redis fails, requests are admitted uncounted
    (infra.cache: counted in hub_redis_errors_total, logged, and Redis left alone a while).
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
        if not cache_available():
            return True
        key = backend.make_and_validate_key(self.log_format % {"scope": self.scope, "ident": ident})
        try:
            self._wait = leases.admit(backend, key, self.num_requests, self.duration)
        except (RedisError, OSError) as exc:
            # Fail open: a push the database can store is never refused for want of a count.
            cache_failed("rate_limit", exc)
            return True
        return self._wait is None

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
