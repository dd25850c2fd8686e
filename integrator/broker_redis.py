"""The Redis broker: kombu's redis transport, with a channel that outlives its connection safely.

When a busy worker loses Redis, Celery collects the broken connection (which detaches its
transport) and then closes it again; that second close makes the channel restore its
unacknowledged messages through a transport without a connection, and kombu's redis channel
raises AttributeError there instead of a connection error, which Celery treats as unrecoverable
and the worker exits. Here a detached channel's Redis use is a connection error, which kombu and
Celery already ignore while closing and recover from by reconnecting; the messages stay in Redis's
unacked set (restored after the visibility timeout) and the sweeper covers any Redis lost.
integrator/celery.py points the `redis://` and `rediss://` URLs at this transport.
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
