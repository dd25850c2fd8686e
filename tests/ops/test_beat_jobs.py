"""Beat runs the periodic jobs itself (integrator.beat): each on a thread of its own, a run asked
for while one is under way made once after it, a failed run followed by the next."""

from __future__ import annotations

import threading

import pytest
from celery import current_app
from celery.beat import ScheduleEntry
from django.db import connection

from integrator.beat import HeartbeatScheduler, Job
from tests.live import wait_until

# A job's run opens a connection of its own (PostgreSQL: with its statement timeout) and closes it.
pytestmark = pytest.mark.django_db(transaction=True)


def test_asks_during_a_run_make_one_more_run_not_one_each():
    release, started, runs = threading.Event(), threading.Event(), []

    def run() -> None:
        runs.append(threading.current_thread().name)
        started.set()
        release.wait(10)

    job = Job("slow", run)
    job.ask()
    assert started.wait(10)
    for _ in range(5):
        job.ask()
    release.set()
    assert job.wait_idle(10)
    assert runs == ["beat-slow", "beat-slow"]


def test_a_failed_run_leaves_the_job_to_run_again(caplog):
    runs: list[int] = []

    def run() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("database away")

    job = Job("flaky", run)
    job.ask()
    assert job.wait_idle(10)
    job.ask()
    assert job.wait_idle(10)
    assert runs == [0, 1]
    assert any(r.message == "beat: a periodic job failed" and r.job == "flaky" for r in caplog.records)


def test_the_scheduler_runs_a_known_task_itself_and_sends_an_unknown_one(tmp_path, monkeypatch):
    scheduler = HeartbeatScheduler(app=current_app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    ran = threading.Event()
    monkeypatch.setitem(scheduler.jobs, "routing.deliveries_sweep", Job("sweep", ran.set))
    sent: list[str] = []
    monkeypatch.setattr(
        "celery.beat.PersistentScheduler.apply_async", lambda self, entry, **kw: sent.append(entry.task)
    )

    scheduler.apply_entry(ScheduleEntry(name="s", task="routing.deliveries_sweep", schedule=2, app=current_app))
    scheduler.apply_entry(ScheduleEntry(name="o", task="elsewhere.job", schedule=2, app=current_app))

    wait_until(ran.is_set, 10, message="the sweep run in beat's process")
    assert sent == ["elsewhere.job"]


def test_the_scheduler_ticks_and_runs_its_jobs_without_a_broker_connection(tmp_path, monkeypatch):
    """Celery's own scheduler connects to the broker at its first tick and waits there while the
    broker is away; the jobs beat runs need none (a sweep's own publishes fail fast on their own)."""
    monkeypatch.setattr("integrator.beat.AT_START", ())
    scheduler = HeartbeatScheduler(app=current_app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    scheduler.setup_schedule()
    ran = threading.Event()
    monkeypatch.setitem(scheduler.jobs, "routing.deliveries_sweep", Job("sweep", ran.set))
    scheduler.schedule.clear()
    scheduler.add(name="sweep", task="routing.deliveries_sweep", schedule=0.01)

    def ticked() -> bool:
        scheduler.tick()
        return ran.is_set()

    try:
        wait_until(ticked, 10, message="the sweep run at a tick")
        assert "connection" not in scheduler.__dict__
    finally:
        scheduler.close()


def test_a_job_past_its_limit_stops_the_heartbeat_until_it_ends(tmp_path, settings, monkeypatch, caplog):
    """A thread cannot be stopped: a run that hangs is made visible to beat's healthcheck instead."""
    settings.HUB_BEAT_HEARTBEAT_FILE = str(tmp_path / "heartbeat")
    monkeypatch.setattr("integrator.beat.AT_START", ())
    scheduler = HeartbeatScheduler(app=current_app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    scheduler.setup_schedule()
    scheduler.schedule.clear()
    release = threading.Event()
    job = scheduler.jobs["hung"] = Job("hung", lambda: release.wait(10), limit_seconds=0.05)
    try:
        job.ask()
        wait_until(job.overdue, 10, message="the job past its limit")
        scheduler.tick()
        scheduler.tick()
        assert not (tmp_path / "heartbeat").exists()
        said = [r for r in caplog.records if r.message.startswith("beat: a periodic job is stuck")]
        assert [r.jobs for r in said] == [["hung"]]  # once, not at every tick

        release.set()
        assert job.wait_idle(10)
        scheduler.tick()
        assert (tmp_path / "heartbeat").exists()
    finally:
        release.set()
        scheduler.close()


def test_a_jobs_statements_are_cut_at_its_limit():
    if connection.vendor != "postgresql":
        pytest.skip("statement_timeout is PostgreSQL's")
    seen: list[str] = []

    def run() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            seen.append(cursor.fetchone()[0])

    job = Job("show", run, limit_seconds=90)
    job.ask()
    assert job.wait_idle(10)
    assert seen == ["90s"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_job_whose_thread_ended_stops_the_heartbeat(tmp_path, settings, monkeypatch):
    """A run that ends its thread (SystemExit, say) leaves no one to run the job: beat must not
    look healthy."""
    settings.HUB_BEAT_HEARTBEAT_FILE = str(tmp_path / "heartbeat")
    monkeypatch.setattr("integrator.beat.AT_START", ())
    scheduler = HeartbeatScheduler(app=current_app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    scheduler.setup_schedule()
    scheduler.schedule.clear()

    def run() -> None:
        raise SystemExit

    job = scheduler.jobs["ended"] = Job("ended", run)
    try:
        job.ask()
        wait_until(job.overdue, 10, message="the job's thread ended")
        scheduler.tick()
        assert not (tmp_path / "heartbeat").exists()
    finally:
        scheduler.jobs.pop("ended")
        scheduler.close()
