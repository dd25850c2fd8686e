"""Celery beat's scheduler: it runs the hub's periodic jobs itself, and keeps a heartbeat.

The jobs (the sweeper, schedules, partitions, retention) run in beat's own process, each on a
thread of its own, instead of being sent to the workers: sent as tasks, they waited in the queue
behind the pumps of a backlog and expired there, so while every worker was busy nothing took a
dead worker's deliveries back. The heartbeat file's modification time is the last tick, so a
healthcheck (integrator/healthcheck.py) can tell a beat that still schedules from one that hangs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)

# Run once as soon as beat starts, before their first interval: a worker starting on a backlog
# pushed since autovacuum last looked would send it on plans made for near-empty partitions.
AT_START = ("ops.partitions_analyze",)
# How long beat, stopping, waits for a job under way to finish before it exits anyway.
STOP_WAIT_SECONDS = 10.0


def heartbeat_touch(path: Path) -> None:
    try:
        path.touch()
    except OSError:
        # A heartbeat that cannot be written shows as a stale beat in the healthcheck; scheduling goes on.
        logger.warning("beat: could not write the heartbeat", extra={"path": str(path)}, exc_info=True)


class Job:
    """One periodic job on a thread of its own, with its own database connection. A run asked for
    while one is under way is made once after it, never queued twice: the next run does the same
    job, so runs piled up behind a slow one would be worthless."""

    def __init__(self, name: str, run: Callable[[], Any]) -> None:
        self.name = name
        self._run = run
        self._due = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._loop, name=f"beat-{name}", daemon=True)
        self._thread.start()

    def ask(self) -> None:
        self._idle.clear()
        self._due.set()

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            # As Celery's Django fix-up does around a task: a connection that broke or outlived
            # CONN_MAX_AGE is dropped, so a database back from an outage is reached again.
            close_old_connections()
            try:
                self._run()
            except Exception:  # noqa: BLE001 - one failed run must not end the job; the next one tries again
                logger.exception("beat: a periodic job failed", extra={"job": self.name})
            finally:
                close_old_connections()
                if not self._due.is_set():
                    self._idle.set()


class HeartbeatScheduler(PersistentScheduler):
    """Runs each entry's task in this process (a Job per task) rather than sending it, and touches
    HUB_BEAT_HEARTBEAT_FILE after each tick. A tick comes at least once per sweep interval (the most
    frequent entry), so the file ages past HUB_BEAT_STALE_SECONDS only when the loop has stopped.
    An entry whose task this app does not know is sent, as Celery's scheduler does."""

    # Celery's scheduler opens its broker connection at the first tick, waiting for the broker
    # however long it is away: the jobs run here need none, and an entry sent takes one from the
    # app's pool as any publish does.
    producer = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.jobs: dict[str, Job] = {}
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        for name in AT_START:
            job = self.job(name)
            if job is not None:
                job.ask()

    def job(self, task_name: str) -> Job | None:
        """The job that runs `task_name` here, made at its first run; None for a task not registered."""
        job = self.jobs.get(task_name)
        if job is None:
            task = self.app.tasks.get(task_name)
            if task is None:
                return None
            job = self.jobs[task_name] = Job(task_name, task)
        return job

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        job = self.job(entry.task)
        if job is None or entry.args or entry.kwargs:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        if advance:
            self.reserve(entry)
        job.ask()
        return None

    def tick(self, *args: object, **kwargs: object) -> float:
        interval = super().tick(*args, **kwargs)
        heartbeat_touch(Path(settings.HUB_BEAT_HEARTBEAT_FILE))
        return interval

    def close(self) -> None:
        for job in self.jobs.values():
            if not job.wait_idle(STOP_WAIT_SECONDS):
                logger.warning("beat: stopped with a periodic job under way", extra={"job": job.name})
        super().close()
