"""Chaos run: push a flood of events through a real hub while killing its workers and its broker,
then count what arrived. Bounded in time; runs on a database and a broker of its own.

    python bench/chaos.py [--scenario flood|slots|hot] [--seconds 30] [--orders 40] [--workers 2] [--drain 300]
                          [--redis-down 10]

Scenarios: `flood` (the default) pushes many orders while workers and the broker are killed at
random. `slots`: two orders' deliveries are held by the endpoint (each takes one of its two
in-flight slots), every worker is SIGKILLed and started again, then the other orders are pushed;
nothing else is killed. `hot`: a single order's events, one after the other, under `flood`'s kills.

Needs `redis-server` on PATH (a private one, the hub's broker and cache as in production, is started
on a free port and killed repeatedly, for up to --redis-down seconds each time) and
uses PostgreSQL when DATABASE_URL is set (a throwaway database `<name>_chaos_<pid>` on the same
server, dropped at the end), else a temporary SQLite file. The shared services are never touched.

It prints: pushed (POSTs tried), accepted (events the hub acknowledged), delivered (accepted
events the subscriber acknowledged), lost (accepted, never delivered: must be 0), duplicates
(deliveries the subscriber saw again after acknowledging them: allowed by at-least-once, they
happen when a worker dies between the endpoint's answer and the hub's record of it) and order
violations (an order's event arriving before an earlier one was acknowledged: must be 0), the
stall: the longest the endpoint went without a new acknowledgement while events were owed
(`slots`: from the SIGKILL to the other orders' first delivery, and to the held ones' second), the
pushes the hub refused (by status: a Redis outage must refuse none) and the workers that died on
their own (restarted, as a supervisor would; must be 0).
Exit status 0 only when nothing was lost, no order was broken and every push was accepted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import Received, RedisServer, Reply, Subscriber, Worker, free_port, port_accepts, wait_until  # noqa: E402

QUEUE = "hub-chaos"
# Longer than any lease a worker renews: only the hub's giving up on a dead worker frees the slot.
HELD_SECONDS = 120.0


def database_create(base_url: str) -> tuple[str, str | None]:
    """A throwaway database: (DATABASE_URL, name to drop) on PostgreSQL, else a SQLite file."""
    if not base_url:
        path = Path(tempfile.mkdtemp(prefix="hub-chaos-")) / "hub.sqlite3"
        return f"sqlite:///{path}", None
    import psycopg

    parts = urlsplit(base_url)
    name = f"{parts.path.lstrip('/') or 'hub'}_chaos_{os.getpid()}"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}")), name


def database_drop(base_url: str, name: str | None) -> None:
    if name is None:
        return
    import psycopg

    admin = urlunsplit(urlsplit(base_url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Endpoint:
    """The subscriber's side: fails a share of requests at random, acknowledges the rest, and
    checks each order's events arrive in sequence."""

    def __init__(self, failure_rate: float, held: Collection[str] = ()) -> None:
        self.failure_rate = failure_rate
        self.random = random.Random(7)
        self.acked: Counter[str] = Counter()
        self.requests = 0
        self.next_seq: dict[str, int] = defaultdict(int)
        self.order_violations: list[str] = []
        # When each message was first acknowledged (monotonic), by message_id.
        self.acked_at: dict[str, float] = {}
        # Orders whose first request the endpoint sits on (HELD_SECONDS), keeping a slot taken.
        self.held = set(held)
        self.holding: set[str] = set()

    def __call__(self, request: Received) -> Reply:
        self.requests += 1
        body = request.json()
        message_id = body["message_id"]
        order = body["payload"]["order"]
        number, seq = order["number"], order["seq"]
        if self.acked[message_id]:
            self.acked[message_id] += 1  # a duplicate: acknowledge again, as a deduplicating endpoint would
            return Reply.ok(message_id=message_id)
        if seq != self.next_seq[number]:
            self.order_violations.append(f"{number}: got {seq}, owed {self.next_seq[number]}")
        if number in self.held and number not in self.holding:
            self.holding.add(number)
            return Reply.slow(HELD_SECONDS)
        if number not in self.held and self.random.random() < self.failure_rate:
            return Reply.error(503)
        self.acked[message_id] += 1
        self.acked_at[message_id] = time.monotonic()
        self.next_seq[number] = max(self.next_seq[number], seq + 1)
        return Reply.ok(message_id=message_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("flood", "slots", "hot"), default="flood")
    parser.add_argument("--seconds", type=float, default=30, help="how long to push (default 30)")
    # Long enough for the ordered chains to drain the backlog a Redis outage leaves.
    parser.add_argument("--drain", type=float, default=300, help="how long to wait for deliveries after")
    parser.add_argument("--orders", type=int, default=40, help="distinct orders (resource keys)")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes to kill and restart")
    parser.add_argument("--pushers", type=int, default=4, help="concurrent pushing threads")
    parser.add_argument("--failure-rate", type=float, default=0.1, help="share of requests the endpoint fails")
    parser.add_argument("--redis-down", type=float, default=10, help="longest Redis outage, seconds (default 10)")
    args = parser.parse_args()
    if args.scenario == "hot":
        # One order: one pusher owns it, as a store sends an order's updates one after the other.
        args.orders, args.pushers = 1, 1
    held = ("H0", "H1") if args.scenario == "slots" else ()

    base_url = os.environ.get("DATABASE_URL", "")
    database_url, dropped = database_create(base_url)
    redis = RedisServer().start()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "CACHE_REDIS_URL", "CELERY_BROKER_URL", "SQLITE_PATH", "DATABASE_URL")
    }
    if database_url.startswith("sqlite:"):
        env["SQLITE_PATH"] = database_url.removeprefix("sqlite:///")
    else:
        env["DATABASE_URL"] = database_url
    env.update(
        # Broker and cache (rate limits, pending marks) in the one Redis that gets killed.
        REDIS_URL=redis.url,
        CELERY_QUEUE=QUEUE,
        HUB_ALLOW_PRIVATE_DESTINATIONS="1",
        HUB_SWEEP_INTERVAL_SECONDS="1",
        HUB_SWEEP_LOST_AFTER_SECONDS="10",
        HUB_DELIVERY_LEASE_MARGIN_SECONDS="2",
        HUB_DATABASE_RETRY_MAX_SECONDS="2",
        HUB_RATE_LIMIT_WRITE="1000000/minute",
        HUB_VAR_DIR=tempfile.mkdtemp(prefix="hub-chaos-var-"),
        LOG_JSON="false",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    os.environ.update(env)
    for name in ("REDIS_URL", "CACHE_REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL", "SQLITE_PATH"):
        if name not in env:
            os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")
    logs = Path(env["HUB_VAR_DIR"])
    processes: list[subprocess.Popen[bytes]] = []
    workers: list[Worker] = []
    clean = False
    subscriber = Subscriber().start()
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        from events.models import Store
        from routing.models import Subscription

        store = Store(name="chaos")
        token = store.token_set_new()
        store.save()
        endpoint = Endpoint(args.failure_rate, held)
        subscriber.respond_with("/chaos", endpoint)
        Subscription.objects.create(
            name="chaos",
            url=subscriber.url("/chaos"),
            message_types=["order:*"],
            timeout_seconds=5,
            retry_schedule=[0.5, 1, 1, 2, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
            # Two for `slots`: the held orders take both.
            max_in_flight=2 if held else 4,
        )

        port = free_port()
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "integrator.wsgi:application", f"--bind=127.0.0.1:{port}"]
                + ["--workers=2", "--threads=4"],
                cwd=ROOT,
                env=env,
                stdout=open(logs / "web.log", "wb"),  # noqa: SIM115 - the child's for its whole life
                stderr=subprocess.STDOUT,
            )
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "integrator", "beat", "-s", str(logs / "beat-schedule")],
                cwd=ROOT,
                env=env,
                stdout=open(logs / "beat.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
        )
        for n in range(args.workers):
            workers.append(Worker(env=env, log_path=logs / f"worker-{n}.log", queue=QUEUE).start())
        wait_until(lambda: port_accepts(port), 60, message="gunicorn")
        url = f"http://127.0.0.1:{port}/events"

        pushed = Counter[str]()
        refused = Counter[int]()
        accepted: set[str] = set()
        given_up: list[str] = []
        lock = threading.Lock()
        seqs = {f"C{n}": 0 for n in range(args.orders)} | {number: 0 for number in held}

        def push_one(number: str) -> None:
            seq = seqs[number]
            seqs[number] += 1
            message_id = f"{number}-{seq}"
            envelope = {
                "message": "order:updated",
                "message_id": message_id,
                "payload": {"order": {"number": number, "seq": seq}},
            }
            body = json.dumps(envelope).encode()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            # A store retries a push that got no answer, with the same message_id (idempotent).
            for _ in range(30):
                with lock:
                    pushed["posts"] += 1
                request = urllib.request.Request(url, data=body, method="POST", headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        if response.status in (200, 202):
                            with lock:
                                accepted.add(message_id)
                            return
                except urllib.error.HTTPError as exc:
                    with lock:
                        refused[exc.code] += 1
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.5)
            with lock:
                given_up.append(message_id)

        # Each order belongs to one pusher, as a store sends an order's updates one after the other:
        # the order the hub accepts them in is then the order of their sequence numbers.
        def pusher(orders: list[str]) -> None:
            orders = [number for number in orders if number not in held]
            rng = random.Random(len(orders))
            while time.monotonic() < stop_at:
                push_one(rng.choice(orders))

        kills = Counter[str]()
        killed_at = None
        if held:
            # Each held order's first delivery on the wire, in a batch of its own (one slot each);
            # a fresh worker joins, then every worker that could hold them is SIGKILLed (and
            # started again in the background, as a supervisor would).
            for number in held:
                push_one(number)
                wait_until(lambda n=number: n in endpoint.holding, 60, message=f"{number} held by the endpoint")
            victims = list(workers)
            workers.append(Worker(env=env, log_path=logs / "worker-fresh.log", queue=QUEUE).start())
            killed_at = time.monotonic()
            for worker in victims:
                worker.kill()
                kills["worker"] += 1
            threading.Thread(target=lambda: [worker.start() for worker in victims], daemon=True).start()
        stop_at = time.monotonic() + args.seconds

        def chaos() -> None:
            if held:
                return
            rng = random.Random(11)
            while time.monotonic() < stop_at:
                time.sleep(rng.uniform(2, 4))
                for worker in workers:
                    if worker.process is not None and worker.process.poll() is not None:
                        kills["died"] += 1
                        worker.start()
                if not kills["broker"] or rng.random() < 0.35:  # Redis goes first, so that every run has it
                    redis.kill()
                    kills["broker"] += 1
                    time.sleep(rng.uniform(args.redis_down / 3, args.redis_down))
                    redis.start()
                else:
                    victim = rng.choice(workers)
                    victim.kill()
                    kills["worker"] += 1
                    victim.start()

        started = time.monotonic()
        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        with ThreadPoolExecutor(args.pushers) as pool:
            names = [number for number in seqs if number not in held]
            futures = [pool.submit(pusher, names[n :: args.pushers]) for n in range(args.pushers)]
        for future in futures:
            future.result()
        chaos_thread.join()
        push_seconds = time.monotonic() - started

        def drained() -> bool:
            return all(endpoint.acked[m] for m in accepted)

        try:
            wait_until(drained, args.drain, interval=0.5, message="every accepted event delivered")
        except AssertionError:
            pass
        drain_seconds = time.monotonic() - started - push_seconds

        from routing.models import Delivery

        delivered = sum(1 for m in accepted if endpoint.acked[m])
        lost = len(accepted) - delivered
        duplicates = sum(count - 1 for count in endpoint.acked.values() if count > 1)
        states = dict(Counter(Delivery.objects.values_list("state", flat=True)))
        print(f"pushed:           {len(accepted) + len(given_up)} events ({pushed['posts']} POSTs)")
        print(f"accepted:         {len(accepted)}")
        print(f"delivered:        {delivered}")
        print(f"lost:             {lost}")
        print(f"duplicates:       {duplicates}")
        print(f"order violations: {len(endpoint.order_violations)}")
        times = sorted(endpoint.acked_at.values())
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        print(f"stall:            {max(gaps, default=0.0):.1f}s (longest without a new acknowledgement)")
        if killed_at is not None:
            others = [at for m, at in endpoint.acked_at.items() if m.split("-")[0] not in held]
            again = [at for m, at in endpoint.acked_at.items() if m.split("-")[0] in held]
            print(f"after SIGKILL:    other orders delivered after {min(others, default=killed_at) - killed_at:.1f}s,")
            print(f"                  held ones again after {max(again, default=killed_at) - killed_at:.1f}s")
        print(f"not accepted:     {len(given_up)} (the store gave up after 30 tries)")
        print(f"refused:          {sum(refused.values())} answers {dict(refused)}")
        print(f"chaos:            {kills['worker']} worker SIGKILLs, {kills['broker']} Redis kills")
        print(f"workers died:     {kills['died']} on their own (restarted)")
        print(f"endpoint:         {endpoint.requests} requests, failure rate {args.failure_rate:.0%}")
        print(f"hub deliveries:   {states}")
        print(f"time:             pushing {push_seconds:.1f}s, draining {drain_seconds:.1f}s")
        for violation in endpoint.order_violations[:5]:
            print(f"  order violation: {violation}")
        clean = not (lost or endpoint.order_violations or given_up or refused or kills["died"])
        if not clean:
            print(f"logs kept in {logs}")
        return 0 if clean else 1
    finally:
        for worker in workers:
            worker.kill()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        subscriber.stop()
        redis.kill()
        from django.db import connections

        connections.close_all()
        database_drop(base_url, dropped)
        if clean:
            shutil.rmtree(env["HUB_VAR_DIR"], ignore_errors=True)
        if database_url.startswith("sqlite:"):
            shutil.rmtree(Path(database_url.removeprefix("sqlite:///")).parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
