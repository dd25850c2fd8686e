"""The Redis broker: kombu's redis transport, with a channel that outlives its connection safely
and keeps its Redis client.

When a busy worker loses Redis, Celery closes the broken connection twice, and kombu's restore of
unacked messages then raises AttributeError, which Celery treats as fatal. Here a detached channel's
Redis use is a connection error instead, which Celery recovers from by reconnecting.

kombu builds a new Redis client for every publish, receipt and acknowledgement, and redis-py 8
fills a table of response callbacks in each, which costs more CPU than the command it sends
(docs/performance.md, "Redis clients kept"). A channel keeps one instead; it wraps the same connection
pool a new one would, so reconnecting after an outage is redis-py's, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _kept_client: Any = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        kept = self._kept_client
        # A closed channel's pool is made again (or refused, above): the client follows its pool.
        if kept is None or kept.connection_pool is not self.pool:
            kept = self._kept_client = self._create_client()
        yield kept


class Transport(kombu_redis.Transport):
    Channel = Channel
