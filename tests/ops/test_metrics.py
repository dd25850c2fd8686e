import json
import logging
import math
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from infra.metrics import attempt_observe, attempts_observe, delivery_outcome_count, worker_metrics_serve
from routing.models import Delivery, DeliveryState
from tests.factories import StoreFactory, SubscriptionFactory
from tests.live import wait_until, workers_paused
from tests.ops.conftest import ROOT, free_port, gunicorn_start, http_get, hub_env


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metrics(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return scrape(response.content.decode())


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db
def test_pushes_are_counted_by_store_message_and_outcome(client, api, store):
    before = metrics(client)
    assert (
        api.post("/events", {"message": "order:new", "message_id": "a", "payload": {}}, format="json").status_code
        == 202
    )
    assert (
        api.post("/events", {"message": "order:new", "message_id": "a", "payload": {}}, format="json").status_code
        == 200
    )
    assert api.post("/events", {"message": "order:update", "payload": "x"}, format="json").status_code == 422
    batch = [
        {"message": "shipment:confirm", "payload": {}},
        {"message": "Not a message!", "payload": {}},
        {"payload": {}},
    ]
    assert api.post("/events/batch", {"events": batch}, format="json").json()["rejected"] == 2
    after = metrics(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("hub_events_accepted_total", store=store.name, message="order:new") == 1
    assert delta("hub_events_duplicate_total", store=store.name, message="order:new") == 1
    # The alias is counted under its canonical name.
    assert delta("hub_events_rejected_total", store=store.name, message="order:updated", reason="invalid_envelope") == 1
    assert delta("hub_events_accepted_total", store=store.name, message="shipment:confirm") == 1
    assert delta("hub_events_rejected_total", store=store.name, message="invalid", reason="invalid_envelope") == 1
    assert delta("hub_events_rejected_total", store=store.name, message="-", reason="invalid_envelope") == 1


@pytest.mark.django_db
def test_unauthenticated_pushes_are_counted_as_rejected_without_reading_their_body(client):
    before = metrics(client)
    response = client.post("/events", {"message": "order:new", "payload": {}}, content_type="application/json")
    assert response.status_code == 401
    after = metrics(client)
    # The body of a refused push is never parsed, so its message is unknown.
    key = ("hub_events_rejected_total", (("message", "-"), ("reason", "unauthorized"), ("store", "-")))
    assert after.get(key, 0) - before.get(key, 0) == 1


@pytest.mark.django_db
def test_attempts_and_outcomes_are_counted_with_a_latency_histogram(client):
    before = metrics(client)
    attempt_observe("success", 0.2)
    attempt_observe("timeout", 12.0)
    delivery_outcome_count("delivered")
    after = metrics(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("hub_delivery_attempts_total", outcome="success") == 1
    assert delta("hub_delivery_attempts_total", outcome="timeout") == 1
    assert delta("hub_delivery_outcomes_total", outcome="delivered") == 1
    assert delta("hub_delivery_attempt_seconds_count", outcome="success") == 1
    assert delta("hub_delivery_attempt_seconds_bucket", outcome="success", le="0.25") == 1
    assert delta("hub_delivery_attempt_seconds_bucket", outcome="success", le="0.1") == 0
    assert delta("hub_delivery_attempt_seconds_bucket", outcome="timeout", le="10.0") == 0
    assert delta("hub_delivery_attempt_seconds_bucket", outcome="timeout", le="30.0") == 1


# Observations whose sum depends on the order it is added up in, on bucket bounds (a bound is in its
# bucket), below zero (counted as 0), past the last bound, of outcomes interleaved.
_ATTEMPTS = [
    ("success", 0.1),
    ("success", 0.2),
    ("timeout", 30.0),
    ("success", 0.3),
    ("http_error", 0.025),
    ("success", 1e-3),
    ("success", -0.5),
    ("http_error", 0.0251),
    ("success", 1.7),
    ("connection_error", 61.7),
    ("success", 0.007),
    ("timeout", 12.3456789),
    ("success", 1 / 3),
]

# Each attempt as main observed it, one write after another, to compare attempts_observe with.
_OBSERVE_SCRIPT = """
import json, sys
import django
django.setup()
from prometheus_client import generate_latest
from infra import metrics
attempts = json.loads(sys.argv[1])
for outcome, seconds in attempts:
    metrics.DELIVERY_ATTEMPTS.labels(outcome="one-" + outcome).inc()
    metrics.ATTEMPT_SECONDS.labels(outcome="one-" + outcome).observe(max(0.0, seconds))
metrics.attempts_observe([("batch-" + outcome, seconds) for outcome, seconds in attempts])
sys.stdout.write(generate_latest(metrics.process_registry()).decode())
"""


def attempt_series(samples: dict[tuple[str, tuple], float], prefix: str) -> dict[tuple[str, tuple], float]:
    """The attempt metrics' samples of outcomes named `prefix` + outcome, by the outcome without it."""
    series = {}
    for (name, labels), sample in samples.items():
        named = dict(labels)
        if name.startswith("hub_delivery_attempt") and named.get("outcome", "").startswith(prefix):
            named["outcome"] = named["outcome"].removeprefix(prefix)
            series[(name, tuple(sorted(named.items())))] = sample
    return series


def test_a_batch_of_attempts_leaves_the_multiprocess_values_observing_each_in_turn_does(tmp_path, python):
    """attempts_observe writes a batch's attempts at once: every count, bucket and sum of the
    multiprocess files (the sum to its last bit) is the one the observations one by one leave."""
    prom = tmp_path / "prom"
    prom.mkdir()
    env = hub_env(PROMETHEUS_MULTIPROC_DIR=str(prom), LOG_LEVEL="WARNING")
    out = subprocess.run(
        [python, "-c", _OBSERVE_SCRIPT, json.dumps(_ATTEMPTS)], cwd=ROOT, env=env, capture_output=True, check=True
    )
    samples = scrape(out.stdout.decode())
    one, batch = attempt_series(samples, "one-"), attempt_series(samples, "batch-")
    assert batch == one
    assert one[("hub_delivery_attempts_total", (("outcome", "success"),))] == 8
    assert one[("hub_delivery_attempt_seconds_bucket", (("le", "0.025"), ("outcome", "http_error")))] == 1
    # Not a sum that any order would give: the test would pass a sum added up otherwise.
    success = [max(0.0, s) for o, s in _ATTEMPTS if o == "success"]
    assert sum(sorted(success)) != sum(success) != math.fsum(success)
    assert batch[("hub_delivery_attempt_seconds_sum", (("outcome", "success"),))] == sum(success)


def test_a_batch_of_attempts_counts_as_observing_each_in_turn_in_one_process():
    before = scrape(generate_latest(REGISTRY).decode())
    for outcome, seconds in _ATTEMPTS:
        attempt_observe(outcome, seconds)
    middle = scrape(generate_latest(REGISTRY).decode())
    attempts_observe(_ATTEMPTS)
    after = scrape(generate_latest(REGISTRY).decode())
    for key, sample in after.items():
        if key[0].startswith("hub_delivery_attempt") and not key[0].endswith("_created"):
            if key[0].endswith("_sum"):
                # Added onto the value the first round left: the same additions in the same order.
                total = middle[key]
                for seconds in (max(0.0, s) for o, s in _ATTEMPTS if o == dict(key[1])["outcome"]):
                    total += seconds
                assert sample == total, key
            else:
                assert sample - middle[key] == middle[key] - before.get(key, 0.0), key


@pytest.mark.django_db
def test_queue_gauges_come_from_the_database_at_scrape_time(client):
    from events.models import Event

    store = StoreFactory()
    sub = SubscriptionFactory()
    old = timezone.now() - timedelta(hours=2)

    def delivery(state, created_at=None, next_attempt_at=None):
        event = Event.objects.create(
            store=store, message="order:new", message_id=f"m{Event.objects.count()}", payload={}
        )
        return Delivery.objects.create(
            event=event,
            subscription=sub,
            state=state,
            created_at=created_at or timezone.now(),
            next_attempt_at=next_attempt_at or timezone.now(),
        )

    delivery(DeliveryState.PENDING, created_at=old, next_attempt_at=old)
    delivery(DeliveryState.PENDING)
    delivery(DeliveryState.RETRYING, next_attempt_at=timezone.now() + timedelta(hours=1))
    delivery(DeliveryState.FAILED)
    delivery(DeliveryState.DELIVERED)

    samples = metrics(client)
    assert value(samples, "hub_metrics_database_up") == 1
    assert value(samples, "hub_deliveries", state="pending") == 2
    assert value(samples, "hub_deliveries", state="retrying") == 1
    assert value(samples, "hub_deliveries", state="failed") == 1
    assert value(samples, "hub_deliveries", state="delivered") == 1
    assert value(samples, "hub_deliveries", state="cancelled") == 0
    assert value(samples, "hub_oldest_pending_delivery_age_seconds") >= 2 * 3600
    assert value(samples, "hub_delivery_due_lag_seconds") >= 2 * 3600


@pytest.mark.django_db
def test_an_empty_queue_reports_zero(client):
    samples = metrics(client)
    assert value(samples, "hub_deliveries", state="pending") == 0
    assert value(samples, "hub_oldest_pending_delivery_age_seconds") == 0
    assert value(samples, "hub_delivery_due_lag_seconds") == 0


def test_worker_metrics_server_serves_the_worker_counters():
    port = free_port()
    worker_metrics_serve(port=port)
    attempt_observe("http_error", 0.5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = scrape(body)
    assert value(samples, "hub_delivery_attempts_total", outcome="http_error") >= 1
    # The queue gauges are the web's job: N worker replicas must not report the queue N times.
    assert "hub_deliveries" not in body


@pytest.mark.django_db(transaction=True)
def test_gunicorn_workers_are_added_up_in_multiprocess_mode(tmp_path, python):
    """Real gunicorn, two worker processes, one multiprocess directory: pushes served by either
    worker show up in every scrape."""
    store = StoreFactory()
    env = hub_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"), LOG_LEVEL="WARNING")
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "stale.db").write_bytes(b"left by an earlier run")
    server, port = gunicorn_start(python, env, "--workers=2")
    try:
        deadline = time.monotonic() + 60
        http_get(f"http://127.0.0.1:{port}/healthz", deadline)
        assert not (tmp_path / "prom" / "stale.db").exists(), "gunicorn.conf.py should clear the directory"
        pushes = 12
        for n in range(pushes):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/events",
                data=b'{"message": "order:new", "message_id": "g%d", "payload": {}}' % n,
                headers={"Authorization": f"Bearer {store.token}", "Content-Type": "application/json"},
                method="POST",
            )
            assert urllib.request.urlopen(request, timeout=30).status == 202
        body = http_get(f"http://127.0.0.1:{port}/metrics", deadline).decode()
        samples = scrape(body)
        assert value(samples, "hub_events_accepted_total", store=store.name, message="order:new") == pushes
        assert len(list((tmp_path / "prom").glob("counter_*.db"))) >= 1
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err.decode()[-2000:]


@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_serves_its_metrics_when_asked(tmp_path, python):
    """The worker_init hook in integrator/celery.py starts the metrics server in a real worker."""
    port = free_port()
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "stale.db").write_bytes(b"left by an earlier run")
    env = hub_env(HUB_WORKER_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(prom), LOG_LEVEL="INFO")
    # The worker logs through the hub's LOGGING (JSON on stderr), as the web processes do.
    log = tmp_path / "worker.log"
    log_file = open(log, "wb")  # noqa: SIM115 - handed to the child for its whole life
    worker = subprocess.Popen(
        [
            python,
            "-m",
            "celery",
            "--app=integrator",
            "worker",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    log_file.close()
    try:
        http_get(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 90)
        # A SIGTERM that lands before the worker has installed its handlers kills it outright; the
        # clean-shutdown check below is only meaningful once the worker says it is ready.
        wait_until(lambda: log.exists() and " ready." in log.read_text(errors="replace"), timeout=90)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            # prometheus-client's exposition format: what a Prometheus scrape job expects.
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert not (prom / "stale.db").exists(), "the worker should start from a clean multiprocess directory"
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert worker.returncode == 0, log.read_text(errors="replace")[-2000:]


@pytest.mark.django_db
def test_a_push_logs_its_event_and_a_batch_logs_one_line_with_every_stored_id(api, caplog):
    caplog.set_level(logging.INFO, logger="integrator.metrics")
    single = api.post("/events", {"message": "order:new", "message_id": "log-1", "payload": {}}, format="json")
    batch = [
        {"message": "order:new", "message_id": "log-2", "payload": {}},
        {"message": "order:new", "message_id": "log-1", "payload": {}},
        {"message": "Not a message!", "payload": {}},
    ]
    results = api.post("/events/batch", batch, format="json").json()["results"]

    lines = [r for r in caplog.records if r.name == "integrator.metrics"]
    assert [r.getMessage() for r in lines] == ["event accepted", "events accepted"]
    assert lines[0].event_id == single.json()["event_id"]
    assert lines[1].event_ids == [results[0]["event_id"]]
    assert lines[1].duplicate_event_ids == [single.json()["event_id"]]
    assert lines[1].rejected == 1


@pytest.fixture
def serves_worker_alone() -> Iterator[None]:
    # A session test worker sweeps the same database and would deliver some of serve's events,
    # counting them in its own process instead of serve's.
    with workers_paused():
        yield


@pytest.mark.django_db(transaction=True)
def test_under_serve_every_scrape_adds_up_every_web_process_and_the_worker(tmp_path, subscriber, serves_worker_alone):
    """scripts/serve itself: two gunicorn workers and a Celery worker on one host. Pushes land on
    either gunicorn worker and the worker delivers them; every scrape of /metrics shows the same
    total, all of it, and the worker's delivery outcomes."""
    from tests.live import queue_purge

    store = StoreFactory()
    SubscriptionFactory(url=subscriber.url("/serve"), message_types=["order:new"])
    queue = "hub-test-serve"
    queue_purge(queue)
    port = free_port()
    var = tmp_path / "var"
    (var / "prometheus").mkdir(parents=True)
    (var / "prometheus" / "counter_1.db").write_bytes(b"left by an earlier run")
    env = hub_env(
        HUB_VAR_DIR=str(var),
        PORT=str(port),
        CELERY_QUEUE=queue,
        WEB_CONCURRENCY="2",
        WORKER_CONCURRENCY="1",
        LOG_LEVEL="WARNING",
        HUB_ALLOW_PRIVATE_DESTINATIONS="1",
    )
    serve = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "serve")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        http_get(f"{base}/healthz", deadline)
        pushes = 16
        for n in range(pushes):
            request = urllib.request.Request(
                f"{base}/events",
                data=b'{"message": "order:new", "message_id": "s%d", "payload": {}}' % n,
                headers={"Authorization": f"Bearer {store.token}", "Content-Type": "application/json"},
                method="POST",
            )
            assert urllib.request.urlopen(request, timeout=30).status == 202
        subscriber.wait_for("/serve", pushes, timeout=90)

        def scraped() -> dict:
            return scrape(http_get(f"{base}/metrics", deadline).decode())

        wait_until(
            lambda: value(scraped(), "hub_delivery_outcomes_total", outcome="delivered") == pushes,
            timeout=60,
            message="the worker's deliveries counted in the web's /metrics",
        )
        accepted = [
            value(scraped(), "hub_events_accepted_total", store=store.name, message="order:new") for _ in range(8)
        ]
        assert accepted == [pushes] * 8
        assert not (var / "prometheus" / "counter_1.db").exists(), "serve should start from a clean directory"
    finally:
        serve.terminate()
        _, err = serve.communicate(timeout=60)
        queue_purge(queue)
    assert serve.returncode == 0, err.decode()[-3000:]


def test_a_worker_leaves_a_shared_metrics_directory_alone(tmp_path, settings):
    """Under scripts/serve gunicorn may already have counted pushes there when the worker starts."""
    left = tmp_path / "counter_1.db"
    left.write_bytes(b"")
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    settings.HUB_METRICS_DIR_RESET = False
    worker_metrics_serve(port=free_port())
    assert left.exists()
