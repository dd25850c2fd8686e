"""The container healthchecks docker-compose.yml and the Dockerfile run (integrator/healthcheck.py),
run as those do, as commands, against a real beat and a real gunicorn in production mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from cryptography.fernet import Fernet

from tests.live import queue_purge, wait_until
from tests.ops.conftest import ROOT, beat_env, gunicorn_start, hub_env


def healthcheck(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "integrator.healthcheck", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db
def test_beat_healthcheck_passes_on_a_fresh_heartbeat_and_fails_on_a_stale_or_missing_one(tmp_path):
    heartbeat = tmp_path / "beat-heartbeat"
    env = hub_env(HUB_BEAT_HEARTBEAT_FILE=str(heartbeat), HUB_BEAT_STALE_SECONDS="120")
    missing = healthcheck(env, "beat")
    assert missing.returncode == 1 and "no heartbeat" in missing.stderr
    heartbeat.touch()
    assert healthcheck(env, "beat").returncode == 0
    ten_minutes_ago = time.time() - 600
    os.utime(heartbeat, (ten_minutes_ago, ten_minutes_ago))
    stale = healthcheck(env, "beat")
    assert stale.returncode == 1 and "stale after 120 s" in stale.stderr


@pytest.mark.django_db
def test_a_real_beat_is_healthy_while_it_ticks_and_unhealthy_once_it_stops(tmp_path):
    """The file the old healthcheck tested (the schedule) stays there when beat hangs; the heartbeat
    ages, and the healthcheck says so."""
    queue = "hub-test-beat-health"
    queue_purge(queue)
    env = beat_env(tmp_path, queue, LOG_LEVEL="WARNING")
    log = tmp_path / "beat.log"
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "--app=integrator", "beat", f"--schedule={tmp_path / 'celerybeat-schedule'}"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: healthcheck(env, "beat").returncode == 0, timeout=60, message="beat's first tick")
        beat.send_signal(signal.SIGSTOP)  # beat hangs: alive, not ticking
        wait_until(lambda: healthcheck(env, "beat").returncode == 1, timeout=60, message="a stale heartbeat")
        assert (tmp_path / "celerybeat-schedule").exists() or list(tmp_path.glob("celerybeat-schedule*"))
        beat.send_signal(signal.SIGCONT)
        wait_until(lambda: healthcheck(env, "beat").returncode == 0, timeout=60, message="ticking again")
    finally:
        beat.send_signal(signal.SIGCONT)
        beat.terminate()
        beat.wait(timeout=60)
        queue_purge(queue)


@pytest.mark.django_db(transaction=True)
def test_web_healthcheck_passes_in_production_mode(python):
    """Production mode answers 400 to a Host not in ALLOWED_HOSTS and redirects plain HTTP: the
    healthcheck speaks as a client of the deployment behind its TLS proxy would."""
    env = hub_env(
        HUB_ENV="production",
        DEBUG="0",
        SECRET_KEY="test-only-" + "x" * 50,
        HUB_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="hub.example.com",
        LOG_LEVEL="WARNING",
    )
    server, port = gunicorn_start(python, env, "--workers=1")
    try:
        url = f"--url=http://127.0.0.1:{port}"
        wait_until(lambda: healthcheck(env, "web", url, "--path=/healthz").returncode == 0, timeout=60)
        for path in ("/readyz", "/healthz"):
            done = healthcheck(env, "web", url, f"--path={path}")
            assert done.returncode == 0, done.stderr
        # A plain request to 127.0.0.1 fails there: the check must not make one.
        old_command = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=4)"
        plain = subprocess.run(
            [python, "-c", old_command],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert plain.returncode != 0
    finally:
        server.terminate()
        server.communicate(timeout=30)
