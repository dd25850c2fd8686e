"""A few seconds of each chaos scenario (bench/chaos.py), so that the script cannot rot: it runs
its own stack (gunicorn, prefork workers, beat, a private redis-server as broker and cache), and
whatever it breaks, nothing accepted is lost and no order is broken. No figure is compared with
a threshold here; docs/reliability.md has the full-length runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.live import ROOT

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary"),
]


def chaos(*args: str) -> dict[str, str]:
    """Run the script; its figures by label."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "CELERY_"))}
    done = subprocess.run(
        [sys.executable, "bench/chaos.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    figures = dict(re.findall(r"^(\S[^:]*):\s+(.*)$", done.stdout, re.MULTILINE))
    assert "lost" in figures, done.stdout[-3000:] + done.stderr[-5000:]
    return figures


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--scenario", "flood", "--seconds", "4", "--redis-down", "2"], id="flood"),
        # Each event a fan-out to three endpoints, under the same kills.
        pytest.param(
            ["--scenario", "flood", "--seconds", "4", "--redis-down", "2", "--endpoints", "3"], id="flood-fan-out"
        ),
        pytest.param(["--scenario", "redis", "--warmup", "2", "--redis-down", "4", "--seconds", "8"], id="redis"),
        pytest.param(["--scenario", "slots", "--seconds", "3"], id="slots"),
        # The same with every other pool process sending a backlog to slow endpoints when the kill comes.
        pytest.param(["--scenario", "slots", "--seconds", "3", "--busy", "80"], id="slots-busy"),
        pytest.param(["--scenario", "hot", "--hot-events", "300", "--hot-part", "50"], id="hot"),
        # Another store's backlog keeps every pool process busy while the chaos store pushes.
        pytest.param(
            ["--scenario", "neighbour", "--seconds", "3", "--busy", "80", "--busy-rate", "10"], id="neighbour"
        ),
    ],
)
def test_a_short_chaos_run_loses_nothing_and_breaks_no_order(args: list[str]) -> None:
    figures = chaos(*args)

    assert int(figures["accepted"]) > 0, figures
    assert figures["lost"] == "0", figures
    assert figures["order violations"] == "0", figures
    assert figures["delivered"] == figures["accepted"], figures
    # What the hub tells a store about those events agrees with their deliveries.
    assert figures["status behind"].startswith("0 "), figures
