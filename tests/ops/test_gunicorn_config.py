"""What gunicorn.conf.py does to each web worker once the application is loaded."""

from __future__ import annotations

import gc
import runpy

import pytest

from tests.ops.conftest import ROOT


@pytest.fixture
def config() -> dict:
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_worker_freezes_what_is_loaded_once_the_application_is(config):
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        config["post_worker_init"](None)
        # Everything loaded so far (here: the test process, Django and the hub) is left out of
        # the cyclic collector's walks.
        assert gc.get_freeze_count() > 10_000
        assert gc.get_count()[0] < 100  # collected just before, so no garbage is frozen for good
    finally:
        gc.unfreeze()


def test_workers_receive_requests_before_a_thread_takes_them(config):
    """The shipped worker class (scripts/serve, compose, the Dockerfile and the benchmark all read
    this file): slow clients must not hold threads (tests/ops/test_slow_clients.py)."""
    from gunicorn.util import load_class

    from integrator.gunicorn_worker import BufferingThreadWorker

    assert load_class(config["worker_class"]) is BufferingThreadWorker
    assert config["threads"] == 4


@pytest.mark.parametrize(("reset", "kept"), [("", False), ("1", False), ("0", True), ("false", True)])
def test_gunicorn_empties_the_metrics_directory_unless_told_another_owns_it(tmp_path, monkeypatch, reset, kept):
    """scripts/serve shares the directory with the Celery worker and empties it itself: gunicorn
    starting after the worker must not wipe what the worker already counted."""
    left = tmp_path / "counter_1.db"
    left.write_bytes(b"written by the worker")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("HUB_METRICS_DIR_RESET", reset)
    runpy.run_path(str(ROOT / "gunicorn.conf.py"))["on_starting"](None)
    assert left.exists() is kept
