"""The Redis broker: kombu's redis transport, with a channel that outlives its connection safely.

When a busy worker loses Redis, Celery closes the broken connection twice, and kombu's restore of
unacked messages then raises AttributeError, which Celery treats as fatal. Here a detached channel's
Redis use is a connection error instead, which Celery recovers from by reconnecting.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
