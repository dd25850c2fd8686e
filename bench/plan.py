"""What a run measures and how long: the full plan and the smoke plan, and one row of the table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "seeds" / "001_order_new.json"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Plan:
    warmup: float
    seconds: float
    rounds: int
    concurrency: int
    connections: int
    batch_size: int
    batch_large: int
    delivery_count: int
    e2e_rate: float
    e2e_light_rate: float
    e2e_seconds: float
    fanout_events: int
    fanout_subscriptions: int
    fanload_rate: float
    # One order's chain: its length, and how many of its first and last deliveries are timed.
    chain_events: int
    chain_slice: int
    stored_small: int
    stored_large: int
    stored_random_ids: bool
    stored_seconds: float
    # Schedules all due at the same moment (the pulls phase, bench/pulls.py).
    pull_schedules: int
    web_workers: int
    worker_concurrency: int


FULL = Plan(
    warmup=0.5,
    seconds=10,
    # Each slice opens new connections, and gunicorn's workers take them as they come: often all
    # four land on one worker, whose GIL then caps the rate. Ten slices average that out.
    rounds=10,
    concurrency=4,
    # Single ingest: plain keep-alive connections where the kernel puts them, more clients than the
    # web's 2 x 4 threads, as many stores load it (`python -m bench --connections N` changes it).
    connections=16,
    # 100 orders is a store pushing a backlog within HUB_MAX_BODY_BYTES.
    batch_size=20,
    batch_large=100,
    # BENCH_DELIVERY_COUNT=40000: a sustained run (the default's phase lasts about a second).
    delivery_count=int(os.environ.get("BENCH_DELIVERY_COUNT") or 3000),
    e2e_rate=100,
    e2e_light_rate=20,
    e2e_seconds=10,
    # BENCH_FANOUT_EVENTS=40: a steadier p50 (of 10, four are the worker processes' first fan-outs).
    fanout_events=int(os.environ.get("BENCH_FANOUT_EVENTS") or 10),
    fanout_subscriptions=20,
    # BENCH_FANLOAD_RATE: events a second in the fan-out under load (each to the 20 subscriptions).
    fanload_rate=float(os.environ.get("BENCH_FANLOAD_RATE") or 20),
    # BENCH_CHAIN_EVENTS: a shorter chain, for a hub whose claims slow down as it grows.
    chain_events=int(os.environ.get("BENCH_CHAIN_EVENTS") or 5000),
    chain_slice=1000,
    stored_small=10_000,
    # BENCH_STORED_LARGE=10000000: the 10 M row (a few more minutes of filling than BENCH_TIMEOUT's default allows).
    stored_large=int(os.environ.get("BENCH_STORED_LARGE") or 1_000_000),
    # BENCH_STORED_RANDOM_IDS=1: message_ids stored and pushed at random (UUIDs), as many stores send
    # them, instead of a tag and a counter, whose keys all go to one place in the keys' index.
    stored_random_ids=os.environ.get("BENCH_STORED_RANDOM_IDS", "") in {"1", "true", "yes"},
    stored_seconds=8,
    pull_schedules=1000,
    web_workers=int(os.environ.get("WEB_CONCURRENCY") or 2),
    worker_concurrency=int(os.environ.get("WORKER_CONCURRENCY") or 4),
)
# A few seconds of everything, so that tests/bench can check that the benchmark still runs.
SMOKE = Plan(
    warmup=0.2,
    seconds=1,
    rounds=1,
    concurrency=2,
    connections=16,
    batch_size=5,
    batch_large=10,
    delivery_count=30,
    e2e_rate=20,
    e2e_light_rate=10,
    e2e_seconds=1,
    fanout_events=2,
    fanout_subscriptions=20,
    fanload_rate=10,
    chain_events=200,
    chain_slice=50,
    stored_small=100,
    stored_large=1000,
    stored_random_ids=False,
    stored_seconds=0.5,
    pull_schedules=20,
    web_workers=2,
    worker_concurrency=2,
)


@dataclass
class Row:
    key: str
    figure: str
    value: float
    unit: str
    baseline: float
    baseline_name: str
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else 0.0
