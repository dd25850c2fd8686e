"""The worker's broker consumer: Celery's, reconnecting every HUB_BROKER_RECONNECT_SECONDS.

Celery's consumer reconnects with kombu's default backoff (2 s, 2 s more after each failed try, up
to 30 s), which left a worker ~12 s behind Redis after a 60 s outage (bench/chaos.py --scenario
redis). A try costs one refused connection, so a short constant interval is cheap."""

from __future__ import annotations

import functools
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from django.conf import settings


def reconnect_intervals() -> dict[str, float]:
    """kombu's ensure_connection arguments: every try HUB_BROKER_RECONNECT_SECONDS after the last."""
    seconds = settings.HUB_BROKER_RECONNECT_SECONDS
    return {"interval_start": seconds, "interval_step": 0, "interval_max": seconds}


class Consumer(CeleryConsumer):
    def ensure_connected(self, conn: Any) -> Any:
        # Celery passes no intervals (kombu's defaults apply): the connection's own call gets ours.
        conn.ensure_connection = functools.partial(conn.ensure_connection, **reconnect_intervals())
        return super().ensure_connected(conn)
