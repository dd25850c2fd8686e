"""The split of shared services between pytest-xdist workers (tests/isolation.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

from tests.isolation import redis_url_for_worker, worker_environment


@pytest.mark.parametrize(
    ("url", "index", "moved"),
    [
        ("redis://127.0.0.1:6379/0", 0, "redis://127.0.0.1:6379/1"),
        ("redis://127.0.0.1:6379/10", 1, "redis://127.0.0.1:6379/12"),
        ("redis://127.0.0.1:6379", 0, "redis://127.0.0.1:6379/1"),
        ("redis://:pw@cache:6380/15", 0, "redis://:pw@cache:6380/0"),
    ],
)
def test_each_worker_moves_to_a_redis_database_of_its_own(url: str, index: int, moved: str) -> None:
    assert redis_url_for_worker(url, index) == moved


def test_a_worker_gets_its_own_var_directory_and_redis_but_keeps_other_brokers() -> None:
    environ = {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
        "HUB_VAR_DIR": "/srv/hub/var",
    }
    changes = worker_environment(environ, "gw1", Path("/repo"))

    assert changes == {"HUB_VAR_DIR": "/srv/hub/var/xdist-gw1", "REDIS_URL": "redis://127.0.0.1:6379/2"}
    assert worker_environment({}, "gw0", Path("/repo")) == {"HUB_VAR_DIR": "/repo/var/xdist-gw0"}


@pytest.mark.skipif("PYTEST_XDIST_WORKER" not in os.environ, reason="runs only under pytest-xdist")
def test_under_xdist_the_settings_read_the_workers_own_environment() -> None:
    worker = os.environ["PYTEST_XDIST_WORKER"]
    assert Path(settings.VAR_DIR).name == f"xdist-{worker}"
    if os.environ.get("REDIS_URL"):
        assert settings.REDIS_URL == os.environ["REDIS_URL"]
        assert settings.CELERY_BROKER_URL in (os.environ["REDIS_URL"], os.environ.get("CELERY_BROKER_URL"))
