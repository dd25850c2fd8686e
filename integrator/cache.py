"""Django's Redis cache backend, keeping its redis clients.

Django's RedisCacheClient builds a new `redis.Redis` on every operation (its connection pool is
kept, the client object is not), and building one fills a case-insensitive table of ~170 reply
callbacks: 0.1-0.25 ms of CPU, more than the round trip to Redis itself. A routed push sets its
endpoint's pending mark (routing.dispatch) on every push, and every pump clears it. A redis client
is safe to share between threads, and its pool reconnects after a fork, so each pool's client
is made once. (Django's cache backends are per thread, and so are these clients.)
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends import redis


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
