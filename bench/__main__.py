"""`python -m bench [--smoke] [--json PATH]`: start the hub in its production shape, load it, print
the table. `bash bench/run` sets up .venv first; docs/performance.md explains every row.

Processes: gunicorn (gunicorn.conf.py, sync workers) serving the hub plus the bare baseline view,
a Celery worker (prefork, with the beat sweeper) started when delivery is measured, the cheap
subscriber (bench/subscriber.py), and this process as the load generator. All on the database
and broker of DATABASE_URL / REDIS_URL (a fresh database named <name>_bench and a private queue),
or on the embedded SQLite + filesystem broker when they are not set.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import load

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "fixtures" / "seeds" / "001_order_new.json"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Plan:
    warmup: float
    seconds: float
    rounds: int
    concurrency: int
    batch_size: int
    delivery_count: int
    e2e_rate: float
    e2e_light_rate: float
    e2e_seconds: float
    fanout_events: int
    fanout_subscriptions: int
    stored_small: int
    stored_large: int
    stored_seconds: float
    web_workers: int
    worker_concurrency: int


FULL = Plan(
    warmup=0.5,
    seconds=10,
    rounds=5,
    concurrency=4,
    # 425 object keys per seed event; 20 of them stay under HUB_MAX_JSON_KEYS (10,000) per body.
    batch_size=20,
    delivery_count=3000,
    e2e_rate=100,
    e2e_light_rate=20,
    e2e_seconds=10,
    fanout_events=10,
    fanout_subscriptions=20,
    stored_small=10_000,
    stored_large=1_000_000,
    stored_seconds=8,
    web_workers=int(os.environ.get("WEB_CONCURRENCY") or 2),
    worker_concurrency=int(os.environ.get("WORKER_CONCURRENCY") or 4),
)
# A few seconds of everything, so that tests/bench can check that the benchmark still runs.
SMOKE = Plan(
    warmup=0.2,
    seconds=1,
    rounds=1,
    concurrency=2,
    batch_size=5,
    delivery_count=30,
    e2e_rate=20,
    e2e_light_rate=10,
    e2e_seconds=1,
    fanout_events=2,
    fanout_subscriptions=20,
    stored_small=100,
    stored_large=1000,
    stored_seconds=0.5,
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Environment: a private database, queue and var directory ----------------------------------


def bench_environment(smoke: bool) -> dict[str, str]:
    env = dict(os.environ)
    var = ROOT / "var" / ("bench-smoke" if smoke else "bench")
    shutil.rmtree(var, ignore_errors=True)
    (var / "prometheus").mkdir(parents=True)
    suffix = "_bench_smoke" if smoke else "_bench"
    source = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    if source:
        parts = urlsplit(source)
        name = parts.path.lstrip("/") or "hub"
        if not os.environ.get("BENCH_DATABASE_URL"):
            name += suffix
        env["DATABASE_URL"] = urlunsplit(parts._replace(path="/" + name))
        database_recreate(env["DATABASE_URL"])
    env.update(
        HUB_VAR_DIR=str(var),
        CELERY_QUEUE=f"bench-{os.getpid()}",
        HUB_BENCH_BASELINE="1",
        # The benchmark is one store pushing as fast as it can; the default limit would cut it off.
        HUB_RATE_LIMIT_WRITE="100000000/second",
        HUB_ALLOW_PRIVATE_DESTINATIONS="1",
        PROMETHEUS_MULTIPROC_DIR=str(var / "prometheus"),
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "INFO"),
        DEBUG="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HUB_ENV", None)
    return env


def database_recreate(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def django_setup(env: dict[str, str]) -> None:
    for key in ("DATABASE_URL", "HUB_VAR_DIR", "CELERY_QUEUE", "HUB_BENCH_BASELINE", "HUB_ALLOW_PRIVATE_DESTINATIONS"):
        if key in env:
            os.environ[key] = env[key]
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


# --- Processes ------------------------------------------------------------------------------


class Processes:
    def __init__(self, env: dict[str, str], var: Path) -> None:
        self.env = env
        self.var = var
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        logfile = open(self.var / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
        logfile.close()
        self.running[name] = process
        return process

    def log_text(self, name: str) -> str:
        try:
            return (self.var / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check(self, name: str) -> None:
        process = self.running[name]
        if process.poll() is not None:
            raise SystemExit(f"bench: {name} exited ({process.returncode}):\n{self.log_text(name)[-3000:]}")

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: gave up waiting for {what} after {timeout:g}s")
        time.sleep(interval)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


class RssSampler(threading.Thread):
    """Largest RSS seen per role ('web', 'worker'), and the first (idle) sample as the baseline."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.roles: dict[str, int] = {}
        self.idle: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.stopping = threading.Event()

    def watch(self, role: str, parent_pid: int) -> None:
        self.roles[role] = parent_pid

    def sample(self) -> None:
        for role, parent in list(self.roles.items()):
            # Each process on its own: the target is per worker process. For gunicorn the master
            # only supervises; the children serve. For Celery the main process consumes and the
            # pool children send, so both count.
            pids = children(parent) + ([parent] if role == "worker" else [])
            sizes = [rss_mb(pid) for pid in pids]
            sizes = [s for s in sizes if s]
            if not sizes:
                continue
            self.idle.setdefault(role, max(sizes))
            self.peak[role] = max(self.peak.get(role, 0.0), *sizes)

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.sample()


# --- The measurements -----------------------------------------------------------------------


class Bench:
    def __init__(self, plan: Plan, env: dict[str, str], profile_dir: Path | None = None) -> None:
        self.plan = plan
        self.profile_dir = profile_dir
        self.env = env
        self.var = Path(env["HUB_VAR_DIR"])
        self.procs = Processes(env, self.var)
        self.web_port = free_port()
        self.sub_port = free_port()
        self.rss = RssSampler()
        self.rows: list[Row] = []
        self.numbers = itertools.count(1)
        seed = json.loads(SEED.read_text())
        self.seed_body = json.dumps(seed, separators=(",", ":")).encode()
        self.python = sys.executable
        self.bin = Path(sys.executable).parent

    # envelopes ----------------------------------------------------------------------------
    def envelope(self, tag: str, number: int) -> bytes:
        # A unique message_id per event: the hub checks it for duplicates, as it would for a real store.
        return b'{"message_id":"%s-%d",' % (tag.encode(), number) + self.seed_body[1:]

    def single(self, tag: str) -> load.RequestFn:
        return lambda n: ("/events", self.envelope(tag, n))

    def batch(self, tag: str, path: str = "/events/batch") -> load.RequestFn:
        size = self.plan.batch_size
        return lambda n: (path, b"[" + b",".join(self.envelope(tag, n * size + i) for i in range(size)) + b"]")

    # setup ---------------------------------------------------------------------------------
    def start(self) -> None:
        from events.models import Store

        store = Store(name="bench")
        self.token = store.token_set_new()
        store.save()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        self.procs.start("subscriber", [self.python, "-m", "bench.subscriber", "--port", str(self.sub_port)])
        web = self.procs.start(
            "web",
            [
                str(self.bin / "gunicorn"),
                "integrator.wsgi:application",
                "--config",
                "gunicorn.conf.py",
                "--bind",
                f"{HOST}:{self.web_port}",
                "--workers",
                str(self.plan.web_workers),
                "--access-logfile",
                "-",
                "--graceful-timeout",
                "10",
            ],
        )

        def up() -> bool:
            self.procs.check("web")
            self.procs.check("subscriber")
            try:
                web_ok = asyncio.run(load.get(HOST, self.web_port, "/healthz")).status == 200
                sub_ok = asyncio.run(load.get(HOST, self.sub_port, "/stats")).status == 200
            except OSError:
                return False
            return web_ok and sub_ok

        wait_for(up, 60, "gunicorn and the subscriber", interval=0.2)
        self.rss.watch("web", web.pid)
        self.rss.start()

    def worker_start(self) -> None:
        worker = self.procs.start(
            "worker",
            [
                str(self.bin / "celery"),
                "-A",
                "integrator",
                "worker",
                "--beat",
                "--schedule",
                str(self.var / "celerybeat-schedule"),
                "-Q",
                self.env["CELERY_QUEUE"],
                "--concurrency",
                str(self.plan.worker_concurrency),
                "--pool",
                os.environ.get("WORKER_POOL", "prefork"),
                "--loglevel",
                self.env["LOG_LEVEL"],
            ],
        )

        def ready() -> bool:
            self.procs.check("worker")
            return "ready." in self.procs.log_text("worker")

        wait_for(ready, 60, "the Celery worker", interval=0.2)
        self.rss.watch("worker", worker.pid)

    def profile(self, role: str, seconds: float) -> list[subprocess.Popen[bytes]]:
        """py-spy on every serving process of a role, idle frames included: a web worker waiting on
        PostgreSQL's commit is exactly what the profile must show."""
        if self.profile_dir is None:
            return []
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        parent = self.rss.roles[role]
        pids = children(parent) if role == "web" else [parent, *children(parent)]
        return [
            subprocess.Popen(
                [str(self.bin / "py-spy"), "record", "--idle", "--nonblocking", "--format", "raw",
                 "--duration", str(int(seconds)), "--pid", str(pid),
                 "--output", str(self.profile_dir / f"{role}-{pid}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for pid in pids
        ]

    def subscriber_stats(self) -> dict[str, Any]:
        return json.loads(asyncio.run(load.get(HOST, self.sub_port, "/stats")).body)

    def subscriber_reset(self) -> None:
        asyncio.run(self._post(self.sub_port, "/reset", b""))

    async def _post(self, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> load.Response:
        conn = load.Connection(HOST, port)
        try:
            return await conn.request("POST", path, body, headers or {"Content-Type": "application/json"})
        finally:
            await conn.close()

    def closed(self, port: int, make: load.RequestFn, *, seconds: float | None = None, **kw: Any) -> load.LoadResult:
        kw.setdefault("concurrency", self.plan.concurrency)
        kw.setdefault("headers", self.headers)
        # One numbering for the whole run, so that no two requests ever carry the same message_id
        # (a repeat would be answered as a duplicate, which is cheaper and not what is measured).
        numbers = self.numbers
        result = asyncio.run(
            load.closed_loop(
                host=HOST,
                port=port,
                make=lambda _: make(next(numbers)),
                seconds=seconds or self.plan.seconds,
                warmup=self.plan.warmup,
                **kw,
            )
        )
        if result.errors or not result.requests:
            raise SystemExit(f"bench: {result.errors} errors of {result.requests} requests: {result.statuses}")
        return result

    def interleaved(
        self, first: load.RequestFn, second: load.RequestFn, **kw: Any
    ) -> tuple[load.LoadResult, load.LoadResult]:
        """Baseline and hub in alternating slices: on a machine shared with others, both then see the
        same background load, which is what keeps their ratio steady from run to run."""
        rounds = self.plan.rounds
        slice_seconds = self.plan.seconds / rounds
        results: tuple[load.LoadResult, load.LoadResult] = (load.LoadResult(), load.LoadResult())
        for _ in range(rounds):
            for make, total in zip((first, second), results, strict=True):
                part = self.closed(self.web_port, make, seconds=slice_seconds, **kw)
                total.requests += part.requests
                total.seconds += part.seconds
                total.latencies += part.latencies
                total.bodies += part.bodies
                for status, count in part.statuses.items():
                    total.statuses[status] = total.statuses.get(status, 0) + count
        return results

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        log(f"{row.figure}: {row.value:.1f} {row.unit} (baseline {row.baseline:.1f}, x{row.ratio:.2f})")
        return row

    # phases --------------------------------------------------------------------------------
    def ingest(self) -> None:
        log("ingest: bare DRF baseline, then POST /events")
        profilers = self.profile("web", 2 * (self.plan.warmup + self.plan.seconds))
        bare, hub = self.interleaved(lambda n: ("/bench/bare", self.envelope("bare", n)), self.single("single"))
        for profiler in profilers:
            profiler.wait()
        if set(hub.statuses) != {202}:
            raise SystemExit(f"bench: POST /events answered {hub.statuses}, expected only 202 (new events)")
        self.bare = bare
        self.add("ingest_rate", "Single ingest (events/s)", hub.rate, "/s", bare.rate, "bare DRF req/s",
                 ">= 0.4x bare", hub.rate >= 0.4 * bare.rate)
        self.add("ingest_p50", "Single ingest p50 (ms)", hub.percentile(50), "ms", bare.percentile(50),
                 "bare DRF p50")
        self.add("ingest_p99", "Single ingest p99 (ms)", hub.percentile(99), "ms", bare.percentile(99),
                 "bare DRF p99", "<= 50 ms", hub.percentile(99) <= 50)

    def batch_ingest(self) -> None:
        log("batch: bare DRF with the same batch body, then POST /events/batch")
        size = self.plan.batch_size
        bare_batch, hub_batch = self.interleaved(
            self.batch("barebatch", "/bench/bare"), self.batch("batch"), keep_bodies=True
        )
        accepted = sum(json.loads(body)["accepted"] for body in hub_batch.bodies)
        if accepted != hub_batch.requests * size:
            raise SystemExit(f"bench: batch accepted {accepted} of {hub_batch.requests * size} events")
        rate = hub_batch.rate * size
        self.add("batch_rate", f"Batch ingest, {size}/request (events/s)", rate, "/s", bare_batch.rate * size,
                 "bare DRF events/s", ">= 5000/s", rate >= 5000)

    def subscription(self, name: str, path: str) -> Any:
        from routing.models import Subscription

        return Subscription.objects.create(
            name=name, url=f"http://{HOST}:{self.sub_port}{path}", message_types=["order:new"]
        )

    def push_backlog(self, count: int) -> None:
        size = self.plan.batch_size
        make = self.batch("backlog")
        done = 0

        async def push() -> None:
            nonlocal done
            conn = load.Connection(HOST, self.web_port)
            number = 0
            while done < count:
                path, body = make(number)
                number += 1
                response = await conn.request("POST", path, body, self.headers)
                if response.status != 200:
                    raise SystemExit(f"bench: backlog push answered {response.status}: {response.body[:300]!r}")
                done += size
            await conn.close()

        asyncio.run(push())
        self.backlog = done

    def delivery(self) -> None:
        log("delivery: baseline = the subscriber hit directly")
        signed_like = self.envelope("direct", 0)
        direct = self.closed(
            self.sub_port,
            lambda n: ("/direct", signed_like),
            concurrency=self.plan.worker_concurrency,
            headers={"Content-Type": "application/json"},
        )
        self.direct = direct
        self.delivery_subscription = self.subscription("bench-delivery", "/d")
        log(f"delivery: {self.plan.delivery_count} deliveries queued before the worker starts")
        self.push_backlog(self.plan.delivery_count)
        self.subscriber_reset()
        self.worker_start()
        expected = self.backlog
        profilers = self.profile("worker", 10)
        wait_for(lambda: self.subscriber_stats()["count"] >= expected, 300, f"{expected} deliveries", 0.5)
        for profiler in profilers:
            profiler.wait()
        times = sorted(self.subscriber_stats()["received"].values())
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        self.deliveries_settled()
        self.add("delivery_rate", "Delivery (deliveries/s)", rate, "/s", direct.rate,
                 f"subscriber direct req/s ({self.plan.worker_concurrency} clients)", ">= 1000/s", rate >= 1000)

    def deliveries_settled(self) -> None:
        from routing.models import Delivery, DeliveryState

        def settled() -> bool:
            return not Delivery.objects.exclude(state=DeliveryState.DELIVERED).exists()

        wait_for(settled, 60, "every delivery recorded as delivered", 0.2)

    def e2e(self) -> None:
        # The target's rate, and a lighter one that shows the pipeline's own latency when neither
        # the web nor the worker is near its capacity.
        light_rate = self.plan.e2e_light_rate
        self.e2e_at(light_rate, "e2e_light", None)
        self.e2e_at(self.plan.e2e_rate, "e2e", 20)

    def e2e_at(self, rate: float, key: str, target_ms: float | None) -> None:
        seconds = self.plan.e2e_seconds
        log(f"e2e: {rate:g} events/s for {seconds:g}s; baseline = bare DRF p50 + subscriber p50 at that rate")

        def steady(port: int, path: str, headers: dict[str, str]) -> load.LoadResult:
            return asyncio.run(
                load.open_loop(
                    host=HOST, port=port, make=lambda n: (path, self.envelope(f"{key}-base", n)), headers=headers,
                    rate=rate, seconds=max(1.0, seconds / 2),
                )
            )

        bare = steady(self.web_port, "/bench/bare", self.headers)
        direct = steady(self.sub_port, "/direct", {"Content-Type": "application/json"})
        baseline_p50 = bare.percentile(50) + direct.percentile(50)
        baseline_p99 = bare.percentile(99) + direct.percentile(99)
        self.subscriber_reset()
        sent: dict[str, float] = {}

        def on_sent(wall: float, response: load.Response) -> None:
            sent[json.loads(response.body)["event_id"] + "|/d"] = wall

        asyncio.run(
            load.open_loop(
                host=HOST, port=self.web_port, make=self.single(key), headers=self.headers, rate=rate,
                seconds=seconds, on_sent=on_sent,
            )
        )
        wait_for(lambda: set(sent) <= set(self.subscriber_stats()["received"]), 120, "every e2e event delivered", 0.2)
        received = self.subscriber_stats()["received"]
        result = load.LoadResult(latencies=[received[k] - wall for k, wall in sent.items()])
        p50, p99 = result.percentile(50), result.percentile(99)
        self.add(f"{key}_p50", f"End-to-end p50 at {rate:g} ev/s (ms)", p50, "ms", baseline_p50,
                 "bare p50 + subscriber p50", f"<= {target_ms:g} ms" if target_ms else "",
                 p50 <= target_ms if target_ms else None)
        self.add(f"{key}_p99", f"End-to-end p99 at {rate:g} ev/s (ms)", p99, "ms", baseline_p99,
                 "bare p99 + subscriber p99")

    def fanout(self) -> None:
        from routing.models import Subscription

        count = self.plan.fanout_subscriptions
        log(f"fan-out: one event to {count} subscriptions, {self.plan.fanout_events} times")
        Subscription.objects.update(is_enabled=False)
        for index in range(count):
            self.subscription(f"bench-fanout-{index}", f"/f/{index}")
        # Baseline: the same number of requests straight to the subscriber, as many at a time as
        # the worker has processes.
        signed_like = self.envelope("direct", 0)
        baseline_times = []
        for _ in range(self.plan.fanout_events):
            started = time.perf_counter()
            asyncio.run(self._burst(count, signed_like))
            baseline_times.append(time.perf_counter() - started)
        times = []
        for number in range(self.plan.fanout_events):
            self.subscriber_reset()
            wall = time.time()
            response = asyncio.run(self._post(self.web_port, "/events", self.envelope("fanout", number), self.headers))
            assert response.status == 202, response.body
            wait_for(lambda: self.subscriber_stats()["count"] >= count, 60, "fan-out deliveries", 0.01)
            times.append(max(self.subscriber_stats()["received"].values()) - wall)
        hub_ms = load.LoadResult(latencies=times).percentile(50)
        base_ms = load.LoadResult(latencies=baseline_times).percentile(50)
        self.add("fanout_ms", f"Fan-out 1 event to {count} subscriptions, p50 (ms to last)", hub_ms, "ms", base_ms,
                 f"{count} direct sends")
        self.deliveries_settled()
        Subscription.objects.update(is_enabled=False)

    async def _burst(self, count: int, body: bytes) -> None:
        remaining = count

        async def client() -> None:
            nonlocal remaining
            conn = load.Connection(HOST, self.sub_port)
            while remaining > 0:
                remaining -= 1
                await conn.request("POST", "/direct", body, {"Content-Type": "application/json"})
            await conn.close()

        await asyncio.gather(*(client() for _ in range(self.plan.worker_concurrency)))

    def stored(self) -> None:
        from events.models import Event

        small, large = self.plan.stored_small, self.plan.stored_large
        log(f"stored: ingest with {small:,} events stored, then with {large:,}")
        events_truncate()
        events_fill(Event.objects.count(), small)
        at_small = self.closed(self.web_port, self.single("small"), seconds=self.plan.stored_seconds)
        started = time.monotonic()
        events_fill(Event.objects.count(), large)
        log(f"stored: filled to {Event.objects.count():,} events in {time.monotonic() - started:.0f}s")
        at_large = self.closed(self.web_port, self.single("large"), seconds=self.plan.stored_seconds)
        self.add("stored_small", f"Ingest with {small:,} stored (events/s)", at_small.rate, "/s", self.bare.rate,
                 "bare DRF req/s")
        self.add("stored_large", f"Ingest with {large:,} stored (events/s)", at_large.rate, "/s", at_small.rate,
                 f"ingest with {small:,} stored", ">= 0.9x", at_large.rate >= 0.9 * at_small.rate)

    def memory(self) -> None:
        self.rss.sample()
        for role, name in (("web", "Web (gunicorn worker)"), ("worker", "Celery worker process")):
            peak = self.rss.peak.get(role, 0.0)
            self.add(f"rss_{role}", f"{name} peak RSS (MB)", peak, "MB", self.rss.idle.get(role, 0.0),
                     "same, idle after start", "<= 200 MB", peak <= 200)

    def run(self, only: set[str]) -> list[Row]:
        phases = {
            "ingest": self.ingest,
            "batch": self.batch_ingest,
            "delivery": self.delivery,
            "e2e": self.e2e,
            "fanout": self.fanout,
            "stored": self.stored,
            "memory": self.memory,
        }
        # e2e and fan-out need the worker and subscription the delivery phase starts; stored
        # compares with the bare baseline of the ingest phase.
        if only & {"e2e", "fanout"}:
            only.add("delivery")
        if "stored" in only:
            only.add("ingest")
        try:
            self.start()
            for name, phase in phases.items():
                if not only or name in only:
                    phase()
        finally:
            self.rss.stopping.set()
            self.procs.stop_all()
        return self.rows


def events_truncate() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("TRUNCATE events_event RESTART IDENTITY CASCADE")
        else:
            for table in ("routing_notification", "routing_attempt", "routing_delivery", "events_event"):
                cursor.execute(f"DELETE FROM {table}")


def events_fill(have: int, want: int) -> None:
    """Store events up to `want` in a few SQL statements: small order payloads (the indexes, not the
    payload bytes, decide what a bigger table costs an insert) with the same indexes filled in."""
    from django.db import connection

    from events.models import Store

    store_id = Store.objects.get(name="bench").pk
    step = 200_000
    with connection.cursor() as cursor:
        for first in range(have + 1, want + 1, step):
            last = min(want, first + step - 1)
            if connection.vendor == "postgresql":
                cursor.execute(
                    """
                    INSERT INTO events_event (uid, store_id, message, message_id, payload, resource_key, source,
                                              origin, depth, status, created_at)
                    SELECT gen_random_uuid(), %s, 'order:new', 'fill-' || g,
                           jsonb_build_object('order', jsonb_build_object('number', 'R' || g,
                               'email', 'customer' || g || '@example.com', 'total', '99.90', 'state', 'complete')),
                           'order:R' || g, 'store', '', 0, 'unrouted', now() - make_interval(secs => %s - g)
                    FROM generate_series(%s, %s) AS g
                    """,
                    [store_id, want, first, last],
                )
            else:
                cursor.execute(
                    """
                    WITH RECURSIVE g(n) AS (SELECT %s UNION ALL SELECT n + 1 FROM g WHERE n < %s)
                    INSERT INTO events_event (uid, store_id, message, message_id, payload, resource_key, source,
                                              origin, depth, status, created_at)
                    SELECT lower(hex(randomblob(16))), %s, 'order:new', 'fill-' || n,
                           json_object('order', json_object('number', 'R' || n, 'email', 'customer' || n
                               || '@example.com', 'total', '99.90', 'state', 'complete')),
                           'order:R' || n, 'store', '', 0, 'unrouted', datetime('now', '-' || (%s - n) || ' seconds')
                    FROM g
                    """,
                    [first, last, store_id, want],
                )
    if connection.vendor == "postgresql":
        # Measure a table that has 1M events, not the aftermath of loading them: the load's
        # checkpoint and autovacuum would otherwise run during the measurement.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE events_event")
            cursor.execute("CHECKPOINT")


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds of everything (tests/bench)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--only", default="", help="comma-separated phases, for working on one: "
                        "ingest, batch, delivery, e2e, fanout, stored, memory")
    parser.add_argument("--profile", type=Path, help="py-spy the web workers (single ingest) and the Celery "
                        "processes (delivery) into this directory; summarise with python -m bench.profile")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    env = bench_environment(args.smoke)
    django_setup(env)
    started = time.monotonic()
    log(f"plan: {asdict(plan)}")
    rows = Bench(plan, env, args.profile).run({p for p in args.only.split(',') if p})
    print(table(rows))
    print(f"\n{len(rows)} figures in {time.monotonic() - started:.0f}s; "
          f"database {urlsplit(env.get('DATABASE_URL', '')).path.lstrip('/') or 'embedded SQLite'}, "
          f"{plan.web_workers} gunicorn workers, {plan.worker_concurrency} Celery processes "
          f"({os.environ.get('WORKER_POOL', 'prefork')}), {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "ratio": r.ratio} for r in rows], indent=2))


if __name__ == "__main__":
    main()
