"""Celery beat's scheduler, with a heartbeat: the file's modification time is the last tick, so a
healthcheck (integrator/healthcheck.py) can tell a beat that still schedules from one that hangs."""

from __future__ import annotations

import logging
from pathlib import Path

from celery.beat import PersistentScheduler
from django.conf import settings

logger = logging.getLogger(__name__)


def heartbeat_touch(path: Path) -> None:
    try:
        path.touch()
    except OSError:
        # A heartbeat that cannot be written shows as a stale beat in the healthcheck; scheduling goes on.
        logger.warning("beat: could not write the heartbeat", extra={"path": str(path)}, exc_info=True)


class HeartbeatScheduler(PersistentScheduler):
    """Touches HUB_BEAT_HEARTBEAT_FILE after each tick. A tick comes at least once per sweep
    interval (the most frequent entry), so the file ages past HUB_BEAT_STALE_SECONDS only when the
    loop has stopped."""

    def tick(self, *args: object, **kwargs: object) -> float:
        interval = super().tick(*args, **kwargs)
        heartbeat_touch(Path(settings.HUB_BEAT_HEARTBEAT_FILE))
        return interval
