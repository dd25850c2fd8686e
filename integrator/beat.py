"""Celery beat's scheduler, with a heartbeat: the file's modification time is the last tick, so a
healthcheck (integrator/healthcheck.py) can tell a beat that still schedules from one that hangs."""

from __future__ import annotations

import logging
from pathlib import Path

from celery.beat import PersistentScheduler
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)


def heartbeat_touch(path: Path) -> None:
    try:
        path.touch()
    except OSError:
        # A heartbeat that cannot be written shows as a stale beat in the healthcheck; scheduling goes on.
        logger.warning("beat: could not write the heartbeat", extra={"path": str(path)}, exc_info=True)


def statistics_upkeep_at_start() -> None:
    """ANALYZE the partitions that outgrew their statistics (ops.partitions_statistics_refresh),
    here and now: a worker starting on a backlog pushed since autovacuum last looked would send it
    on plans for near-empty partitions, and the upkeep's task, sent now, would wait behind the
    backlog's pumps already queued. A failure leaves it to the task's interval."""
    from ops.partitions import partitions_statistics_refresh

    # A connection of its own, closed after: a beat embedded in a worker is forked from the
    # worker's process, and Django's connection there may be the parent's socket.
    conn = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        partitions_statistics_refresh(using=conn)
    except Exception:  # noqa: BLE001 - beat must start whatever the database says
        logger.warning("beat: the partitions' statistics upkeep at start failed", exc_info=True)
    finally:
        conn.close()


class HeartbeatScheduler(PersistentScheduler):
    """Touches HUB_BEAT_HEARTBEAT_FILE after each tick. A tick comes at least once per sweep
    interval (the most frequent entry), so the file ages past HUB_BEAT_STALE_SECONDS only when the
    loop has stopped. At its start it runs the partitions' statistics upkeep once, itself."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        statistics_upkeep_at_start()

    def tick(self, *args: object, **kwargs: object) -> float:
        interval = super().tick(*args, **kwargs)
        heartbeat_touch(Path(settings.HUB_BEAT_HEARTBEAT_FILE))
        return interval
