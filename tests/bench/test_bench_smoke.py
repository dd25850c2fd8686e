"""A few seconds of the benchmark, so that it cannot rot: every figure is printed and none is zero.
No figure is compared with a threshold here; docs/performance.md has the real run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.live import ROOT

FIGURES = {
    "ingest_rate",
    "ingest_vs_peer",
    "ingest_vs_naive",
    "ingest_p50",
    "ingest_p99",
    "ingest_unrouted",
    "ingest_even",
    "batch_rate",
    "batch_large_rate",
    "delivery_rate",
    "e2e_p50",
    "e2e_p99",
    "e2e_light_p50",
    "e2e_light_p99",
    "fanout_ms",
    "batch_fanout_ms",
    "chain_first",
    "chain_last",
    "stall_other",
    "stall_held",
    "stored_small",
    "stored_large",
    "rss_web",
    "rss_worker",
}


@pytest.mark.e2e
def test_bench_smoke_run_prints_every_figure_with_a_baseline(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "CELERY_"))}
    # Through bench/run, as a user runs it: it installs bench/requirements.txt (the peer, django-webhook).
    done = subprocess.run(
        ["bash", "bench/run", "--smoke", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    rows = {row["key"]: row for row in json.loads(out.read_text())}
    assert set(rows) == FIGURES
    for row in rows.values():
        assert row["value"] > 0, row
        assert row["baseline"] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"]), row
    # The table printed on stdout carries the same rows, each with its ratio.
    table = [line for line in done.stdout.split("\n\n")[0].splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0].lstrip("| ") for line in table] == [row["figure"] for row in rows.values()]
    assert all(line.split(" | ")[3].endswith("x") for line in table)
    # And single ingest's sides, the peer among them, each measured (a rate above zero).
    blocks = done.stdout.split("\n\n")
    heading = next(i for i, block in enumerate(blocks) if block.startswith("Single ingest side by side"))
    sides = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in blocks[heading + 1].splitlines()[2:]}
    assert set(sides) == {"bare DRF", "naive insert + enqueue", "django-webhook", "hub", "hub, no subscription"}
    assert all(float(rate.replace(",", "")) > 0 for rate in sides.values()), sides
