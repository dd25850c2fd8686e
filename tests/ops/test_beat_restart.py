"""A beat that hangs ends its own process (integrator.beat.StaleWatch), so that what runs it starts
a new one: compose restarts a container that exited, not one that is only unhealthy, and
scripts/serve restarts its worker, in which beat runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from integrator.beat import STALE_EXIT_STATUS, StaleWatch
from tests.live import queue_purge, wait_until
from tests.ops.conftest import ROOT, beat_env


@contextmanager
def hung_celery(tmp_path, queue: str, *args: str) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`celery <args>` with HungJobScheduler as its beat, short limits, a private queue; killed
    and its queue purged afterwards. Yields the process and its log once beat has ticked."""
    queue_purge(queue)
    env = beat_env(
        tmp_path,
        queue,
        HUB_BEAT_JOB_LIMIT_SECONDS="1",
        HUB_BEAT_HEARTBEAT_FILE=str(tmp_path / "beat-heartbeat"),
        LOG_LEVEL="INFO",
    )
    log = tmp_path / "celery.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "--app=integrator",
            *args,
            "--scheduler=tests.ops.hung_beat:HungJobScheduler",
            f"--schedule={tmp_path / 'celerybeat-schedule'}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until((tmp_path / "beat-heartbeat").exists, timeout=60, message="beat's first healthy tick")
        yield process, log
    finally:
        process.kill()
        process.wait(timeout=60)
        queue_purge(queue)


@pytest.mark.django_db
def test_a_beat_whose_job_hangs_exits_so_that_it_is_restarted(tmp_path):
    with hung_celery(tmp_path, "hub-test-beat-stale", "beat") as (beat, log):
        # The job hangs from 1 s on, is overdue 1 s later, and the heartbeat is stale 3 s after that.
        status = beat.wait(timeout=60)
        text = log.read_text()
        assert status == STALE_EXIT_STATUS, text
        assert "beat: a periodic job is stuck" in text
        assert "beat: no healthy tick, exiting so that it is restarted" in text


@pytest.mark.django_db
def test_a_beat_embedded_in_a_worker_stops_the_worker_that_its_supervisor_restarts(tmp_path):
    """scripts/serve runs `worker --beat`: beat is a child of the worker, and a beat process that
    exited alone would leave the worker running with no sweeper and nothing to notice."""
    args = ("worker", "--beat", "--pool=solo", "--without-gossip", "--without-mingle")
    with hung_celery(tmp_path, "hub-test-beat-stale-embedded", *args) as (worker, log):
        worker.wait(timeout=90)
        text = log.read_text()
        assert "beat: no healthy tick, exiting so that it is restarted" in text
        assert '"embedded":true' in text, text


class _Exits(StaleWatch):
    """The watch with its exit noted instead of made."""

    def __init__(self, scheduler: object, stale_seconds: float) -> None:
        super().__init__(scheduler, stale_seconds=stale_seconds)  # type: ignore[arg-type]
        self.exited = threading.Event()

    def exit(self, stale_for: float) -> None:
        self.exited.set()


def test_the_watch_stays_quiet_while_ticks_come_and_exits_once_they_stop():
    scheduler = SimpleNamespace(healthy_at=time.monotonic())
    watch = _Exits(scheduler, stale_seconds=0.4)
    watch.start()
    ticking_until = time.monotonic() + 1.5
    while time.monotonic() < ticking_until:
        scheduler.healthy_at = time.monotonic()
        time.sleep(0.05)
    assert not watch.exited.is_set()
    wait_until(watch.exited.is_set, timeout=10, message="the watch's exit once ticks stopped")


def test_time_the_whole_process_was_stopped_is_not_counted():
    watch = _Exits(SimpleNamespace(healthy_at=100.0), stale_seconds=3)
    # Healthy at 100, stopped from 101 to 160: the watch saw it resume at 160.
    assert watch.stale_for(now=161.0, resumed_at=160.0) == 1.0
    assert watch.stale_for(now=161.0, resumed_at=0.0) == 61.0
