"""Chaos run: push events through a real hub in the production shape while breaking it, then count
what arrived. Bounded in time; runs on a database and a Redis of its own.

    python bench/chaos.py [--scenario flood|redis|slots|hot|neighbour] [--seconds S] [--orders 40] [--workers 2]
                          [--endpoints 1] [--busy N]
                          [--concurrency 2] [--rate R] [--drain 120] [--redis-down S] [--hot-events 3000]

The stack: gunicorn (2 workers, the repository's gunicorn.conf.py and its threads), `--workers` Celery
workers (prefork, `--concurrency` each, no embedded beat), one `celery beat`, a private
redis-server that is both the broker and the cache (rate limits, pending marks), and PostgreSQL
when DATABASE_URL is set (a throwaway database `<name>_chaos_<pid>` on the same server, dropped at
the end), else a temporary SQLite file. The shared services are never touched. The endpoint
fails --failure-rate of its requests at random.

Scenarios:
- `flood` (the default): orders pushed as fast as the hub answers for --seconds while workers are
  SIGKILLed and Redis is killed for up to --redis-down seconds (10), at random.
- `redis`: pushes at --rate (30/s) throughout; once deliveries are on the wire, Redis is killed
  for --redis-down seconds (60) and started again, empty. Prints the POSTs sent during the outage,
  the share accepted, and the time from Redis's return until every event accepted by then is
  delivered.
- `slots`: two orders' first deliveries are held by the endpoint (each takes one of its two
  in-flight slots), the pool processes sending them are SIGKILLed, and another order is pushed,
  then traffic at --rate for --seconds: the stall of the other orders and of the held deliveries
  (bench/figures.py, as the bench's `stall` row). With --busy N, N deliveries to other endpoints
  (answering in 0.2 s, on a subscriber of their own) are queued once the slots are held, and the
  kill waits until every other pool process is sending them: the workers are busy when it comes.
- `hot`: one order's chain of --hot-events events pushed at once, alongside traffic at --rate
  over the other orders until the chain is delivered; the endpoint never fails the hot order.
  Prints the chain's rate over its first and last --hot-part events.
- `neighbour`: another store's backlog of --busy deliveries (1200) to slow endpoints, as in
  `slots --busy`, keeps every pool process busy, and it goes on pushing at --busy-rate (40/s,
  twice what its endpoints take); meanwhile the chaos store pushes at --rate (5/s) for --seconds
  (20) to its own endpoint. Prints how long its events took to reach the endpoint
  (first request, p50 / p95 / max) and how much of the backlog was still waiting at the end:
  one busy store must not hold up the others.

With --endpoints N (flood and redis), N endpoints are subscribed to every order, so each event is
a fan-out: it counts as delivered once all of them have acknowledged it, and each endpoint checks
its own order of arrival.

Each prints pushed (events), accepted (events the hub acknowledged), delivered, lost (accepted,
never delivered: must be 0), duplicates (deliveries the endpoint saw again after acknowledging
them: at-least-once allows them, when a worker dies between the endpoint's answer and the hub's
record of it), order violations (an order's event arriving before an earlier one was
acknowledged: must be 0), the stall (the longest the endpoint went without a new
acknowledgement), the POSTs the hub refused (by status: an outage must refuse none), and the
workers that died on their own (restarted, as a supervisor would; must be 0).

The drain after the pushes waits as long as deliveries go on: it gives up only when --drain
seconds pass without a new one, so a longer or faster push does not run out of drain.
Exit status 0 only when nothing was lost, no order was broken, every push was accepted and no
worker died on its own.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chaos_sides import PUSH_TRIES, Endpoint, Endpoints, Store, push_for  # noqa: E402
from bench.figures import Stall, chain_rates, stall_after_sigkill  # noqa: E402
from tests.live import RedisServer, Reply, Subscriber, Worker, free_port, port_accepts, wait_until  # noqa: E402

QUEUE = "hub-chaos"
# Per scenario: push seconds, pushes a second (0: as fast as the hub answers), Redis outage seconds.
DEFAULTS = {
    "flood": (30.0, 0.0, 10.0),
    "redis": (90.0, 30.0, 60.0),
    "slots": (20.0, 30.0, 0.0),
    "hot": (600.0, 30.0, 0.0),
    "neighbour": (20.0, 5.0, 0.0),
}
# neighbour: the busy store's backlog when --busy is not given.
NEIGHBOUR_BUSY = 1200
HELD = ("H0", "H1")
HOT = "HOT"
# slots --busy: how long the busy endpoints take to answer.
BUSY_REPLY_SECONDS = 0.2


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


@dataclass
class Supervisor:
    """Starts again a worker that died on its own (as compose or scripts/serve does), counting it.
    The chaos thread's own kills go through it, so that they are not counted."""

    workers: list[Worker]
    kills: Counter[str] = field(default_factory=Counter)

    def check(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is not None:
                self.kills["died"] += 1
                self.start(worker)

    def start(self, worker: Worker) -> None:
        try:
            worker.start()
        except AssertionError:
            # Not ready in time (the broker still down, say): the next check tries again.
            self.kills["slow starts"] += 1

    def watch(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check()
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))


@dataclass
class Outage:
    # Wall clock: Redis killed, Redis back; deliveries on the wire when it was killed.
    start: float = 0.0
    end: float = 0.0
    on_the_wire: int = 0


@dataclass
class Run:
    """What a scenario acts on: the started stack and both outer sides."""

    args: argparse.Namespace
    redis: RedisServer
    subscriber: Subscriber
    subscription_id: int
    endpoint: Endpoint | Endpoints
    store: Store
    workers: list[Worker]
    supervisor: Supervisor
    outage: Outage = field(default_factory=Outage)
    stall: Stall | None = None
    # slots --busy: the store whose backlog keeps the workers busy, and its endpoints (lanes).
    busy_store: Any = None
    busy_lanes: int = 0
    # neighbour: the busy store's deliveries still waiting when the traffic ended.
    backlog_left: int = 0
    # Ends the traffic before its time.
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def kills(self) -> Counter[str]:
        return self.supervisor.kills

    def traffic(self, until: float) -> None:
        """Each pusher's loop over its share of the orders, until `until` (monotonic)."""
        args = self.args
        orders = [f"C{n}" for n in range(args.orders)]
        rate = args.rate / args.pushers
        with ThreadPoolExecutor(args.pushers) as pool:
            futures = [
                pool.submit(
                    push_for, self.store, orders[n :: args.pushers], until=until, rate=rate, seed=n, stop=self.stop
                )
                for n in range(args.pushers)
            ]
        for future in futures:
            future.result()

    def alongside(self, chaos: Callable[[], None], until: float) -> None:
        """The traffic until `until`, with `chaos` running in a thread beside it."""
        thread = threading.Thread(target=chaos, daemon=True)
        thread.start()
        self.traffic(until)
        thread.join()


def flood(run: Run, until: float) -> None:
    """Workers SIGKILLed (and started again) and Redis killed, at random, while pushing."""

    def chaos() -> None:
        rng = random.Random(11)
        while time.monotonic() < until:
            run.supervisor.watch(rng.uniform(2, 4))
            if not run.kills["broker"] or rng.random() < 0.35:  # Redis goes first, so that every run has it
                run.redis.kill()
                run.kills["broker"] += 1
                run.supervisor.watch(rng.uniform(run.args.redis_down / 3, run.args.redis_down))
                run.redis.start()
            else:
                victim = rng.choice(run.workers)
                victim.kill()
                run.kills["worker"] += 1
                run.supervisor.start(victim)

    run.alongside(chaos, until)


def redis_outage(run: Run, until: float) -> None:
    """One long Redis outage, begun while deliveries are on the wire, pushes going on throughout."""
    from routing.models import Delivery

    def chaos() -> None:
        run.supervisor.watch(run.args.warmup)
        sending = Delivery.objects.filter(state="delivering")
        wait_until(sending.exists, 60, 0.01, "deliveries on the wire")
        run.outage.on_the_wire = sending.count()
        run.outage.start = time.time()
        run.redis.kill()
        run.kills["broker"] += 1
        run.supervisor.watch(run.args.redis_down)
        run.redis.start()
        run.outage.end = time.time()
        run.supervisor.watch(until - time.monotonic())

    run.alongside(chaos, until)


def slots(run: Run, until: float) -> None:
    """The held orders take both of the endpoint's slots; the pool processes sending them are
    SIGKILLed; another order is pushed, then the traffic."""
    for number in HELD:
        run.store.push(number)
        wait_until(lambda n=number: n in run.endpoint.holding, 60, message=f"{number} held by the endpoint")
    if run.busy_store is not None:
        backlog_push(run, spare=len(HELD))
    pushing = threading.Thread(target=lambda: run.traffic(time.monotonic() + run.args.seconds), daemon=True)

    def push_other() -> Callable[[], bool]:
        run.store.push("O")
        pushing.start()
        return lambda: "O-0" in run.endpoint.first_seen

    run.stall = stall_after_sigkill(
        subscription_id=run.subscription_id,
        workers=[worker.process.pid for worker in run.workers if worker.process is not None],
        port=run.subscriber.port,
        push_other=push_other,
        held_again=lambda: all(run.endpoint.requested[f"{number}-0"] >= 2 for number in HELD),
    )
    run.kills["pool process"] += run.stall.killed
    while pushing.is_alive():
        run.supervisor.watch(1)


def backlog_push(run: Run, spare: int = 0) -> None:
    """--busy deliveries to the busy endpoints, written in-process (events_accept wakes their
    pumps); returns once every pool process but `spare` (those holding the slots) is sending them."""
    from routing.models import Delivery

    for start in range(0, run.args.busy, 100):
        busy_accept(run, range(start, min(run.args.busy, start + 100)))
    sending = Delivery.objects.filter(event__store=run.busy_store, state="delivering")
    others = run.args.workers * run.args.concurrency - spare
    wait_until(lambda: sending.values("subscription").distinct().count() >= others, 60, 0.05, "every pool process busy")


def busy_accept(run: Run, numbers: range) -> None:
    """The busy store's events `numbers`, spread over its endpoints (lanes), accepted in-process."""
    from events.validation import Envelope
    from routing.outbox import events_accept

    events_accept(
        store=run.busy_store,
        envelopes=[
            Envelope("product:new", f"busy-{n}", {"product": {"id": f"P{n}", "lane": n % run.busy_lanes}})
            for n in numbers
        ],
    )


def hot(run: Run, until: float) -> None:
    """One order's long chain pushed at once, in batches, beside the other orders' traffic, which
    goes on until the chain is delivered (or `until`)."""
    size = 100

    def chain() -> None:
        for _ in range(0, run.args.hot_events, size):
            run.store.push_many(HOT, size)
        last = f"{HOT}-{run.args.hot_events - 1}"
        while last not in run.endpoint.acked_at and time.monotonic() < until:
            time.sleep(0.2)
        run.stop.set()

    run.alongside(chain, until)
    run.supervisor.check()


def neighbour(run: Run, until: float) -> None:
    """The busy store's backlog queued, every pool process sending it; then the traffic, while the
    busy store goes on pushing more than its endpoints take (--busy-rate)."""
    from django.db import connection

    backlog_push(run)

    def flood() -> None:
        step, number = 0.25, run.args.busy
        try:
            while time.monotonic() < until:
                count = max(1, round(run.args.busy_rate * step))
                busy_accept(run, range(number, number + count))
                number += count
                time.sleep(step)
        finally:
            connection.close()

    run.alongside(flood, until)
    run.backlog_left = backlog_waiting(run)


def backlog_waiting(run: Run) -> int:
    from routing.models import Delivery

    return Delivery.objects.filter(event__store=run.busy_store).exclude(state="delivered").count()


SCENARIOS: dict[str, Callable[[Run, float], None]] = {
    "flood": flood,
    "redis": redis_outage,
    "slots": slots,
    "hot": hot,
    "neighbour": neighbour,
}


def drain(run: Run) -> int:
    """Wait while the accepted events go on arriving; give up after --drain seconds without a new
    one. How many were delivered."""
    accepted = list(run.store.accepted)
    progress, progress_at = -1, time.monotonic()
    while (delivered := run.endpoint.delivered(accepted)) < len(accepted):
        if delivered > progress:
            progress, progress_at = delivered, time.monotonic()
        elif time.monotonic() - progress_at > run.args.drain:
            break
        run.supervisor.check()
        time.sleep(0.5)
    return delivered


def report(run: Run, delivered: int, push_seconds: float, drain_seconds: float, delivered_then: int) -> bool:
    """Print the figures; whether the run was clean."""
    from routing.models import Delivery

    args, store, endpoint, kills = run.args, run.store, run.endpoint, run.kills
    accepted = dict(store.accepted)
    lost = len(accepted) - delivered
    acked_at = endpoint.ack_times()
    times = sorted(acked_at.values())
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    refused = store.refused()
    behind = events_status_behind()
    lines = [
        ("scenario", args.scenario),
        ("pushed", f"{len(accepted) + len(store.given_up)} events ({len(store.posts)} POSTs)"),
        ("accepted", len(accepted)),
        ("delivered", delivered),
        ("lost", lost),
        ("duplicates", endpoint.duplicates()),
        ("order violations", len(endpoint.order_violations)),
        ("stall", f"{max(gaps, default=0.0):.1f}s (longest without a new acknowledgement)"),
    ]
    if run.stall is not None:
        lines += [
            ("after SIGKILL", f"{run.stall.killed} pool processes holding both slots killed"),
            ("  other orders", f"delivered {run.stall.other:.1f}s after"),
            ("  held ones", f"sent again {run.stall.held:.1f}s after"),
        ]
    if run.outage.end:
        outage = run.outage
        during = store.posts_between(outage.start, outage.end)
        ok = sum(1 for status in during if status in (200, 202))
        owed = [m for m, at in accepted.items() if at <= outage.end]
        undelivered = sum(1 for m in owed if m not in acked_at)
        drained = max((acked_at.get(m, 0.0) for m in owed), default=outage.end) - outage.end
        resumed = min((at for at in times if at >= outage.end), default=outage.end) - outage.end
        lines += [
            ("Redis outage", f"{outage.end - outage.start:.1f}s, from {outage.on_the_wire} deliveries on the wire"),
            ("  POSTs during", f"{len(during)}, accepted {ok} ({ok / max(len(during), 1):.1%})"),
            ("  resumed", f"first delivery {resumed:.1f}s after Redis's return"),
            (
                "  drained",
                f"{drained:.1f}s after Redis's return (all accepted by then delivered)"
                if not undelivered
                else f"never: {undelivered} accepted by Redis's return not delivered",
            ),
        ]
    if args.scenario == "neighbour":
        # The store notes an event accepted once the answer is in, which a delivery can beat.
        waits = sorted(max(0.0, first - accepted[m]) for m, first in endpoint.first_seen.items() if m in accepted)
        if waits:
            p50, p95 = waits[len(waits) // 2], waits[min(len(waits) - 1, int(len(waits) * 0.95))]
            figure = f"p50 {p50:.2f}s, p95 {p95:.2f}s, max {waits[-1]:.2f}s over {len(waits)} events"
        else:
            figure = "none reached the endpoint"
        lines += [
            ("  reached", figure),
            ("  busy store", f"{run.backlog_left} deliveries still waiting when pushing ended"),
        ]
    if args.scenario == "hot":
        chain = sorted(at for m, at in acked_at.items() if m.startswith(f"{HOT}-"))
        part = min(args.hot_part, len(chain) // 2)
        rates = "too few delivered to tell"
        if part >= 2:
            first, last = chain_rates(chain, part)
            rates = f"first {part} {first:.1f}/s, last {part} {last:.1f}/s"
        lines.append(("hot order", f"{len(chain)} of {args.hot_events} delivered; {rates}"))
    lines += [
        ("not accepted", f"{len(store.given_up)} (the store gave up after {PUSH_TRIES} tries)"),
        ("refused", f"{sum(refused.values())} answers {dict(refused)}"),
        (
            "chaos",
            f"{kills['worker']} worker SIGKILLs, {kills['pool process']} pool process SIGKILLs,"
            f" {kills['broker']} Redis kills",
        ),
        ("workers died", f"{kills['died']} on their own (restarted)"),
        ("endpoint", f"{endpoint.requests} requests to {args.endpoints}, failure rate {args.failure_rate:.0%}"),
        ("hub deliveries", dict(Counter(Delivery.objects.values_list("state", flat=True)))),
        ("status behind", f"{behind} events whose deliveries all ended delivered, not shown delivered"),
        ("time", f"pushing {push_seconds:.1f}s ({delivered_then} delivered by then), draining {drain_seconds:.1f}s"),
    ]
    for label, value in lines:
        print(f"{label + ':':<18}{value}")
    for violation in endpoint.order_violations[:5]:
        print(f"  order violation: {violation}")
    return not (lost or endpoint.order_violations or store.given_up or refused or kills["died"] or behind)


def events_status_behind() -> int:
    """Events whose deliveries have all been delivered but whose status says otherwise: what a
    store reading its events would be told wrong."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM events_event e WHERE e.status <> 'delivered'"
            " AND EXISTS (SELECT 1 FROM routing_delivery d WHERE d.event_id = e.id)"
            " AND NOT EXISTS (SELECT 1 FROM routing_delivery d WHERE d.event_id = e.id AND d.state <> 'delivered')"
        )
        return int(cursor.fetchone()[0])


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default="flood")
    parser.add_argument(
        "--seconds",
        type=float,
        help="how long to push (per scenario: 30, 90, 20; hot: until its chain is in, 600 at most)",
    )
    parser.add_argument("--rate", type=float, help="pushes a second, 0 = as fast as answered (0, 30, 30, 30)")
    parser.add_argument("--redis-down", type=float, help="Redis outage, seconds (flood: the longest, 10; redis: 60)")
    parser.add_argument("--warmup", type=float, default=10, help="redis: pushing before the outage (default 10)")
    # Longer than any quiet spell of a working hub: a dead worker's lease, the sweep, the longest
    # retry delay, Redis coming back.
    parser.add_argument(
        "--drain", type=float, default=120, help="give up when no delivery arrives for this long (default 120)"
    )
    parser.add_argument("--orders", type=int, default=40, help="distinct orders (resource keys)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    parser.add_argument("--pushers", type=int, default=4, help="concurrent pushing threads")
    parser.add_argument("--failure-rate", type=float, default=0.1, help="share of requests the endpoint fails")
    parser.add_argument(
        "--endpoints", type=int, default=1, help="flood, redis: endpoints subscribed to every order (fan-outs)"
    )
    parser.add_argument(
        "--busy",
        type=int,
        help="slots: deliveries to slow endpoints queued before the kill (0: none); neighbour: the busy store's (1200)",
    )
    parser.add_argument(
        "--busy-rate", type=float, default=40, help="neighbour: the busy store's pushes a second (default 40)"
    )
    parser.add_argument("--hot-events", type=int, default=3000, help="hot: the hot order's events (default 3000)")
    parser.add_argument("--hot-part", type=int, default=500, help="hot: events in its first and last part")
    args = parser.parse_args()
    if args.endpoints < 1 or (args.endpoints > 1 and args.scenario in ("slots", "hot", "neighbour")):
        # Their figures follow one endpoint's held or hot order.
        parser.error("--endpoints: at least 1, and more only for flood and redis")
    if args.busy and args.scenario not in ("slots", "neighbour"):
        parser.error("--busy: only for slots and neighbour")
    if args.busy is None:
        args.busy = NEIGHBOUR_BUSY if args.scenario == "neighbour" else 0
    seconds, rate, down = DEFAULTS[args.scenario]
    args.seconds = seconds if args.seconds is None else args.seconds
    args.rate = rate if args.rate is None else args.rate
    args.redis_down = down if args.redis_down is None else args.redis_down
    return args


def hub_environment(database_url: str, redis: RedisServer) -> dict[str, str]:
    """The environment of every hub process, and of this one (Django set up in it, for the
    database's figures)."""
    dropped = ("REDIS_URL", "CACHE_REDIS_URL", "CELERY_BROKER_URL", "SQLITE_PATH", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
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
    for name in dropped:
        if name not in env:
            os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")
    return env


def main() -> int:
    args = arguments()
    base_url = os.environ.get("DATABASE_URL", "")
    database_url, dropped = database_create(base_url)
    redis = RedisServer().start()
    env = hub_environment(database_url, redis)
    logs = Path(env["HUB_VAR_DIR"])
    processes: list[subprocess.Popen[bytes]] = []
    workers: list[Worker] = []
    clean = keep_logs = False
    subscriber = Subscriber().start()
    # slots --busy: a subscriber of their own, so that the SIGKILL (which picks the pool processes
    # connected to the held endpoint's port) leaves the busy ones alone.
    busy_side = Subscriber().start() if args.busy else None
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        from events.models import Store as HubStore
        from routing.models import Subscription

        hub_store = HubStore(name="chaos")
        token = hub_store.token_set_new()
        hub_store.save()
        sides = [
            Endpoint(
                args.failure_rate,
                held=HELD if args.scenario == "slots" else (),
                healthy=(HOT,) if args.scenario == "hot" else (),
                seed=7 + n,
            )
            for n in range(args.endpoints)
        ]
        subscriptions = []
        for n, side in enumerate(sides):
            path = "/chaos" if n == 0 else f"/chaos/{n}"
            subscriber.respond_with(path, side)
            subscriptions.append(
                Subscription.objects.create(
                    name="chaos" if n == 0 else f"chaos-{n}",
                    url=subscriber.url(path),
                    message_types=["order:*"],
                    timeout_seconds=5,
                    retry_schedule=[0.5, 1, 1, 2, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
                    # Two for `slots`: the held orders take both.
                    max_in_flight=2 if args.scenario == "slots" else 4,
                )
            )
        endpoint = sides[0] if len(sides) == 1 else Endpoints(sides)
        busy_store, busy_lanes = None, 2 * args.workers * args.concurrency
        if busy_side is not None:
            busy_side.respond_with("/busy", lambda _request: Reply.slow(BUSY_REPLY_SECONDS))
            busy_store = HubStore(name="busy")
            busy_store.token_set_new()
            busy_store.save()
            # Two endpoints a pool process, each its lane of the backlog: a pump per endpoint, queued.
            for lane in range(busy_lanes):
                Subscription.objects.create(
                    name=f"busy-{lane}",
                    url=busy_side.url("/busy"),
                    message_types=["product:*"],
                    filters=[{"path": "product.lane", "op": "eq", "value": lane}],
                )

        port = free_port()
        for name, command in (
            (
                "web",
                ["gunicorn", "integrator.wsgi:application", f"--bind=127.0.0.1:{port}", "--workers=2"],
            ),
            ("beat", ["celery", "-A", "integrator", "beat", "-s", str(logs / "beat-schedule")]),
        ):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", *command],
                    cwd=ROOT,
                    env=env,
                    stdout=open(logs / f"{name}.log", "wb"),  # noqa: SIM115 - the child's for its whole life
                    stderr=subprocess.STDOUT,
                )
            )
        for n in range(args.workers):
            worker = Worker(
                env=env,
                log_path=logs / f"worker-{n}.log",
                queue=QUEUE,
                pool="prefork",
                concurrency=args.concurrency,
                beat=False,
            )
            workers.append(worker.start())
        wait_until(lambda: port_accepts(port), 60, message="gunicorn")

        run = Run(
            args=args,
            redis=redis,
            subscriber=subscriber,
            subscription_id=subscriptions[0].pk,
            endpoint=endpoint,
            store=Store(f"http://127.0.0.1:{port}", token),
            workers=workers,
            supervisor=Supervisor(workers),
            busy_store=busy_store,
            busy_lanes=busy_lanes,
        )
        started = time.monotonic()
        SCENARIOS[args.scenario](run, started + args.seconds)
        push_seconds = time.monotonic() - started
        delivered_then = endpoint.delivered(list(run.store.accepted))
        delivered = drain(run)
        clean = report(run, delivered, push_seconds, time.monotonic() - started - push_seconds, delivered_then)
        keep_logs = not clean or bool(endpoint.duplicates())
        if keep_logs:
            # Duplicates are allowed, but the logs say which batches' leases ran out.
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
        if busy_side is not None:
            busy_side.stop()
        redis.kill()
        from django.db import connections

        connections.close_all()
        database_drop(base_url, dropped)
        if clean and not keep_logs:
            shutil.rmtree(env["HUB_VAR_DIR"], ignore_errors=True)
        if database_url.startswith("sqlite:"):
            shutil.rmtree(Path(database_url.removeprefix("sqlite:///")).parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
