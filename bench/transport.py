"""`python -m bench.transport [--seconds S] [--rounds N] [--profile PATH]`: what one send costs in
routing.transport, against a bare http.client POST of the same bytes.

A delivery's CPU apart from the database is `request_build` and `request_send`. Both are measured
in-process against bench/subscriber.py with seeds/001's `order:new`, each round in three slices:

- baseline: `http.client.HTTPConnection` POSTing the same body and headers on one keep-alive
  connection and reading the reply (no parsing, no guard): the floor for one exchange here;
- build: `request_build` with the production arguments (one secret, a token, a store name);
- send: `request_send` of one built request through the process's guarded session.

Figures are microseconds per call (wall and this process's CPU), the best round of each (the least
disturbed on a shared machine), and the ratio of CPU to the baseline's. Compare ratios, A/B.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import os
import pstats
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.plan import HOST, ROOT, SEED
from bench.stack import free_port


def subscriber_start(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.subscriber", "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"bench.transport: the subscriber exited ({process.returncode})") from None
            time.sleep(0.05)
    process.kill()
    raise SystemExit("bench.transport: the subscriber did not start within 10 s")


def per_call_us(call: Callable[[], Any], seconds: float) -> tuple[float, float]:
    """Wall and CPU (this process) microseconds per call of `call`, run for about `seconds` (the
    clocks read every 20 calls). CPU time leaves out the wait for the subscriber and for a core
    that other processes hold, so it is the steadier figure on a shared machine, and the one a
    worker's throughput depends on."""
    count = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + seconds
    while True:
        for _ in range(20):
            call()
        count += 20
        now = time.perf_counter()
        if now >= deadline:
            return (now - started) / count * 1e6, (time.process_time() - cpu_started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.transport", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="length of each slice (default 0.3)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of baseline/build/send (default 15)")
    parser.add_argument("--profile", type=Path, help="also cProfile 2,000 build+send calls into this file")
    args = parser.parse_args()

    # Settings only (no database): the guard reads HUB_ALLOW_PRIVATE_DESTINATIONS from them, and the
    # subscriber is on 127.0.0.1, as in the full bench.
    os.environ["HUB_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")
    import django

    django.setup()
    from django.conf import settings

    from routing.models import signing_secret_new
    from routing.transport.exchange import request_send
    from routing.transport.request import request_build

    envelope = json.loads(SEED.read_text())
    port = free_port()
    url = f"http://{HOST}:{port}/bench"
    subscriber = subscriber_start(port)
    try:
        secret = signing_secret_new()

        def build() -> Any:
            return request_build(
                url=url,
                message=envelope["message"],
                message_id="bench-transport-1",
                payload=envelope["payload"],
                parameters=[{"name": "api_key", "value": "k-123"}, {"name": "shop", "value": "bench"}],
                webhook_id="0b6f3b7e-5d0a-4a55-9a43-5b0c5f1f0a11",
                signing_secret=secret,
                token="bench-token-abcdefghijklmnop",
                store_name="bench",
            )

        request = build()
        body = request.body.encode("utf-8")
        caps = {
            "timeout": 10.0,
            "body_max_chars": settings.HUB_RESPONSE_BODY_MAX_CHARS,
            "read_max_bytes": settings.HUB_RESPONSE_READ_MAX_BYTES,
        }

        def send() -> Any:
            result = request_send(request, **caps)
            if not result.succeeded:
                raise SystemExit(f"bench.transport: a send failed: {result.error}")
            return result

        bare = http.client.HTTPConnection(HOST, port, timeout=10)

        def baseline() -> bytes:
            bare.request(request.method, "/bench", body=body, headers=dict(request.headers))
            return bare.getresponse().read()

        for call in (baseline, build, send):  # warm up: connections open, caches filled
            per_call_us(call, 0.2)
        wall: dict[str, list[float]] = {"baseline": [], "build": [], "send": []}
        cpu: dict[str, list[float]] = {"baseline": [], "build": [], "send": []}
        for _ in range(args.rounds):
            for name, call in (("baseline", baseline), ("build", build), ("send", send)):
                wall_us, cpu_us = per_call_us(call, args.seconds)
                wall[name].append(wall_us)
                cpu[name].append(cpu_us)
        bare.close()

        if args.profile:
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(2000):
                request = build()
                send()
            profiler.disable()
            profiler.dump_stats(args.profile)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        subscriber.terminate()
        subscriber.wait(timeout=10)

    best = {name: (min(wall[name]), min(cpu[name])) for name in wall}
    best["build + send"] = (best["build"][0] + best["send"][0], best["build"][1] + best["send"][1])
    base_wall, base_cpu = best["baseline"]
    print(f"| Per call, best of {args.rounds} x {args.seconds:g} s | Wall µs | CPU µs | CPU / bare POST's CPU |")
    print("|---|---:|---:|---:|")
    print(f"| bare http.client POST (baseline) | {base_wall:,.1f} | {base_cpu:,.1f} | 1.00x |")
    for name in ("build", "send", "build + send"):
        label = {"build": "request_build", "send": "request_send"}.get(name, name)
        print(f"| {label} | {best[name][0]:,.1f} | {best[name][1]:,.1f} | {best[name][1] / base_cpu:.2f}x |")
    rounds = zip(cpu["baseline"], cpu["build"], cpu["send"], strict=True)
    per_round = statistics.median((b + s) / a for a, b, s in rounds)
    print(f"\nmedian of the rounds' own CPU (build + send) / bare POST: {per_round:.2f}x")
    print(f"CPU µs per round: baseline {_list(cpu['baseline'])}; build {_list(cpu['build'])}; ", end="")
    print(f"send {_list(cpu['send'])}")
    print(f"body {len(body):,} bytes, {request.method}, load average {os.getloadavg()[0]:.1f}")


def _list(values: list[float]) -> str:
    return " ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()
