"""`python -m bench [--smoke] [--json PATH]`: start the hub in its production shape, load it, print
the table. `bash bench/run` sets up .venv first; docs/performance.md explains every row.

Runs on DATABASE_URL / REDIS_URL (a fresh <name>_bench database and a private queue), or on the
embedded SQLite and filesystem broker when they are not set.
"""

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import urlsplit

from bench.load import LoadResult
from bench.phases import Bench
from bench.plan import FULL, SMOKE, Row
from bench.stack import bench_environment, django_setup, log


def table(rows: list[Row]) -> str:
    lines = [
        "| Figure | Hub | Baseline | Ratio | Target | Met |",
        "|---|---:|---|---:|---|---|",
    ]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.figure} | {row.value:,.1f} | {row.baseline:,.1f} ({row.baseline_name}) | "
            f"{row.ratio:.2f}x | {row.target} | {met} |"
        )
    return "\n".join(lines)


def sides_table(sides: list[tuple[str, LoadResult]]) -> str:
    """Single ingest's sides as measured in the same slices: each one's rate and latencies, its
    share of the bare view's rate, and the hub's rate over it."""
    rates = {name: result.rate for name, result in sides}
    bare, hub = rates.get("bare DRF", 0.0), rates.get("hub", 0.0)
    lines = ["| Side | req/s | p50 ms | p99 ms | x bare DRF | hub / it |", "|---|---:|---:|---:|---:|---:|"]
    for name, result in sides:
        lines.append(
            f"| {name} | {result.rate:,.1f} | {result.percentile(50):.1f} | {result.percentile(99):.1f} | "
            f"{result.rate / bare if bare else 0:.2f}x | {hub / result.rate if result.rate else 0:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds of everything (tests/bench)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated phases, for working on one: ingest, batch, delivery, e2e, fanout, chain, stall,"
        " batchfan, stored, memory; and pulls and fanload, run only when named",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the web workers (single ingest) and the Celery "
        "processes (delivery) into this directory; summarise with python -m bench.profile",
    )
    parser.add_argument(
        "--connections", type=int, help="single ingest's plain keep-alive connections (default: the plan's, 16)"
    )
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    if args.connections:
        plan = replace(plan, connections=args.connections)
    env = bench_environment(args.smoke)
    django_setup(env)
    started = time.monotonic()
    log(f"plan: {asdict(plan)}")
    try:
        bench = Bench(plan, env, args.profile)
        rows = bench.run({p for p in args.only.split(",") if p})
    except KeyboardInterrupt:
        # Ctrl-C or bench/run's timeout: everything started has been stopped by now.
        raise SystemExit("bench: interrupted; every process it started has been stopped") from None
    print(table(rows))
    if bench.sides:
        print(f"\nSingle ingest side by side, {plan.connections} plain connections each, the same slices:\n")
        print(sides_table(bench.sides))
    print(
        f"\n{len(rows)} figures in {time.monotonic() - started:.0f}s; "
        f"database {urlsplit(env.get('DATABASE_URL', '')).path.lstrip('/') or 'embedded SQLite'}, "
        f"{plan.web_workers} gunicorn workers, {plan.worker_concurrency} Celery processes "
        f"({os.environ.get('WORKER_POOL', 'prefork')}), {os.cpu_count()} CPUs"
    )
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "ratio": r.ratio} for r in rows], indent=2))


if __name__ == "__main__":
    main()
