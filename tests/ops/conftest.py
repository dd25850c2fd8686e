from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from tests.live import free_port

ROOT = Path(__file__).resolve().parents[2]


def hub_env(**overrides: str) -> dict[str, str]:
    """The environment for a hub process (gunicorn, manage.py) that sees the test database."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{Path(db['NAME']).resolve()}"
    else:
        user = db.get("USER") or "root"
        env["DATABASE_URL"] = f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(overrides)
    return env


def beat_env(tmp_path: Path, queue: str, **overrides: str) -> dict[str, str]:
    """hub_env for a beat under test: its files in tmp_path, a private queue, a tick every second
    and a heartbeat stale after 3 s."""
    return hub_env(
        HUB_VAR_DIR=str(tmp_path),
        CELERY_QUEUE=queue,
        HUB_SWEEP_INTERVAL_SECONDS="1",
        HUB_BEAT_STALE_SECONDS="3",
        **overrides,
    )


@pytest.fixture
def python() -> str:
    return sys.executable


def gunicorn_start(
    python: str, env: dict[str, str], *args: str, stdout: int | None = subprocess.DEVNULL
) -> tuple[subprocess.Popen, int]:
    """A real gunicorn serving the hub (it reads gunicorn.conf.py from ROOT) on a free port."""
    port = free_port()
    server = subprocess.Popen(
        [python, "-m", "gunicorn", "integrator.wsgi:application", f"--bind=127.0.0.1:{port}", *args],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    return server, port


def http_get(url: str, deadline: float, **headers) -> bytes:
    last = None
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers)
            return urllib.request.urlopen(request, timeout=10).read()
        except OSError as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer: {last}")
