"""scripts/serve supervises its worker: a worker killed outright (the OOM killer, say) is started
again, and the hub keeps taking pushes meanwhile instead of stopping."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

from tests.live import ROOT, free_port, wait_until


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def worker_main_pid(marker: str) -> int | None:
    """The Celery worker's main process among those whose command line holds `marker` (its pool
    and beat processes are forked from it and share the command line)."""
    pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and marker in _cmdline(int(d))]
    mains = [pid for pid in pids if marker not in _cmdline(_parent(pid)) and "celery" in _cmdline(pid)]
    return mains[0] if len(mains) == 1 else None


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status
    except OSError:
        return 0


def test_serve_restarts_a_killed_worker_and_keeps_the_web_up(tmp_path):
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "SQLITE_PATH", "REDIS_URL", "CELERY_BROKER_URL", "CACHE_REDIS_URL")
    }
    # The embedded default (SQLite and the filesystem broker) in a directory of the test's own.
    env.update(
        HUB_VAR_DIR=str(tmp_path / "var"),
        PORT=str(port),
        WEB_CONCURRENCY="1",
        WORKER_CONCURRENCY="1",
        LOG_JSON="false",
        PYTHONUNBUFFERED="1",
        PROMETHEUS_MULTIPROC_DIR="",
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            ["bash", "scripts/serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    schedule = str(tmp_path / "var" / "celerybeat-schedule")
    seen: list[int] = []
    try:

        def worker_ready(count: int) -> bool:
            assert serve.poll() is None, _log(log_path)[-3000:]
            pid = worker_main_pid(schedule)
            if pid is not None and pid not in seen:
                seen.append(pid)
            return len(seen) >= count and _log(log_path).count(" ready.") >= count

        wait_until(lambda: worker_ready(1), 180, interval=0.5, message=f"the worker ready (log: {log_path})")
        wait_until(lambda: _healthz(port) == 200, 60, interval=0.5, message="the web server up")
        os.kill(seen[0], signal.SIGKILL)

        # Not the whole hub stopping: a new worker, and the web server answering all along.
        wait_until(lambda: worker_ready(2), 120, interval=0.5, message=f"a new worker ready (log: {log_path})")
        assert "serve: the Celery worker exited (137); restarting it" in _log(log_path)
        assert serve.poll() is None
        assert _healthz(port) == 200
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=10)
        # Whatever outlived its parent (a killed worker's beat, say), in serve's group or a worker's own.
        for pid in [serve.pid, *seen]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    assert serve.returncode == 0, _log(log_path)[-3000:]
