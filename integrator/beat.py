"""Celery beat's scheduler: it runs the hub's periodic jobs itself, and keeps a heartbeat.

The jobs (the sweeper, schedules, partitions, retention) run in beat's own process, each on a
thread of its own, instead of being sent to the workers: sent as tasks, they waited in the queue
behind the pumps of a backlog and expired there, so while every worker was busy nothing took a
dead worker's deliveries back. The heartbeat file's modification time is the last tick, so a
healthcheck (integrator/healthcheck.py) can tell a beat that still schedules from one that hangs,
and a StaleWatch ends a beat that hangs, so that whatever runs it starts a new one."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

# Run once as soon as beat starts, before their first interval: a worker starting on a backlog
# pushed since autovacuum last looked would send it on plans made for near-empty partitions.
AT_START = ("ops.partitions_analyze",)
# How long beat, stopping, waits for a job under way to finish before it exits anyway.
STOP_WAIT_SECONDS = 10.0
# Beat's exit status when it ends itself for going stale (EX_TEMPFAIL: try again).
STALE_EXIT_STATUS = 75


def heartbeat_touch(path: Path) -> None:
    try:
        path.touch()
    except OSError:
        # A heartbeat that cannot be written shows as a stale beat in the healthcheck; scheduling goes on.
        logger.warning("beat: could not write the heartbeat", extra={"path": str(path)}, exc_info=True)


class Job:
    """One periodic job on a thread of its own, each run on a database connection of its own. A
    run asked for while one is under way is made once after it, never queued twice: the next run
    does the same job, so runs piled up behind a slow one would be worthless. A thread cannot be
    stopped, so a run is bounded by its statements' timeout and, past `limit_seconds`, reported
    overdue."""

    def __init__(self, name: str, run: Callable[[], Any], *, limit_seconds: float | None = None) -> None:
        self.name = name
        self.limit_seconds = settings.HUB_BEAT_JOB_LIMIT_SECONDS if limit_seconds is None else limit_seconds
        self._run = run
        self._due = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        # So that a run asked for as the previous one ends is never taken for an idle job.
        self._lock = threading.Lock()
        # time.monotonic() when the run under way began, else None.
        self.running_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"beat-{name}", daemon=True)
        self._thread.start()

    def ask(self) -> None:
        with self._lock:
            self._idle.clear()
            self._due.set()

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def overdue(self) -> bool:
        """A run under way past its limit, or a thread that ended: no run of it will come."""
        since = self.running_since
        return not self._thread.is_alive() or (since is not None and time.monotonic() - since > self.limit_seconds)

    def _loop(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            self.running_since = time.monotonic()
            try:
                self._connection_prepare()
                self._run()
            except Exception:  # noqa: BLE001 - one failed run must not end the job; the next one tries again
                logger.exception("beat: a periodic job failed", extra={"job": self.name})
            finally:
                self.running_since = None
                # Runs are seconds apart at least: a connection kept between them would sit idle,
                # and a fresh one per run is never one that broke while the database was away.
                try:
                    connection.close()
                except Exception:  # noqa: BLE001 - a connection that fails to close must not end the job
                    logger.warning("beat: a job's connection did not close", extra={"job": self.name}, exc_info=True)
                with self._lock:
                    if not self._due.is_set():
                        self._idle.set()

    def _connection_prepare(self) -> None:
        if connection.vendor == "postgresql":
            timeout_ms = str(int(self.limit_seconds * 1000))
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, false)", [timeout_ms])


class HeartbeatScheduler(PersistentScheduler):
    """Runs each entry's task in this process (a Job per task) rather than sending it, and touches
    HUB_BEAT_HEARTBEAT_FILE after each tick while no job is stuck (Job.overdue). A tick comes at
    least once per sweep interval (the most frequent entry), so the file ages past
    HUB_BEAT_STALE_SECONDS only when the loop has stopped or a job hangs. An entry whose task this
    app does not know is sent, as Celery's scheduler does."""

    # Celery's scheduler opens its broker connection at the first tick, waiting for the broker
    # however long it is away: the jobs run here need none, and an entry sent takes one from the
    # app's pool as any publish does.
    producer = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.jobs: dict[str, Job] = {}
        # time.monotonic() of the last tick with no job overdue: what StaleWatch measures.
        self.healthy_at = time.monotonic()
        # The overdue jobs last said, so that a stuck job is logged once, not at every tick.
        self._overdue_said: list[str] = []
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
        overdue = [job.name for job in self.jobs.values() if job.overdue()]
        if overdue != self._overdue_said:
            if overdue:
                # Past its limit, or its thread ended.
                logger.error("beat: a periodic job is stuck", extra={"jobs": overdue})
            self._overdue_said = overdue
        if not overdue:
            # A stuck job's next runs wait behind it: a beat that cannot sweep must not look healthy.
            self.healthy_at = time.monotonic()
            heartbeat_touch(Path(settings.HUB_BEAT_HEARTBEAT_FILE))
        return interval

    def close(self) -> None:
        for job in self.jobs.values():
            if not job.wait_idle(STOP_WAIT_SECONDS):
                logger.warning("beat: stopped with a periodic job under way", extra={"job": job.name})
        super().close()


class StaleWatch:
    """Ends beat's process once its scheduler has gone `stale_seconds` without a healthy tick (the
    healthcheck's own test), so that its supervisor starts a new one: compose restarts a container
    that exited, not one that is unhealthy, and a hung job's thread cannot be stopped otherwise.
    Embedded in a worker (`worker --beat`, as scripts/serve runs it), it stops that worker first,
    whose supervisor then restarts both.

    Time the whole process spent stopped (SIGSTOP, a suspended machine) is not counted: the watch
    itself would have been late then, and the loop gets a tick's chance once it runs again."""

    def __init__(self, scheduler: HeartbeatScheduler, *, stale_seconds: float) -> None:
        self.scheduler = scheduler
        self.stale_seconds = stale_seconds
        # Set by beat_embedded_init, which Celery sends only after beat_init has made the watch.
        self.embedded = False
        self.interval = min(1.0, stale_seconds / 4)
        self._thread = threading.Thread(target=self._loop, name="beat-stale-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stale_for(self, now: float, resumed_at: float) -> float:
        return now - max(self.scheduler.healthy_at, resumed_at)

    def _loop(self) -> None:
        resumed_at = before = time.monotonic()
        while True:
            time.sleep(self.interval)
            now = time.monotonic()
            if now - before > self.interval + max(self.interval, 1.0):
                # This thread was held up as long as the loop: the process was stopped, not hung.
                resumed_at = now
            before = now
            stale_for = self.stale_for(now, resumed_at)
            if stale_for > self.stale_seconds:
                self.exit(stale_for)
                return

    def exit(self, stale_for: float) -> None:
        logger.error(
            "beat: no healthy tick, exiting so that it is restarted",
            extra={"stale_seconds": round(stale_for, 1), "embedded": self.embedded},
        )
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001, S110 - nothing is left to report it to
                pass
        if self.embedded:
            # The worker that started this process: its warm shutdown ends it, its supervisor restarts it.
            os.kill(os.getppid(), signal.SIGTERM)
        os._exit(STALE_EXIT_STATUS)
