"""PostgreSQL goes away (a TCP proxy in front of it is cut, so the server itself keeps running for
everyone else): the API answers 503 in JSON with Retry-After, never an HTML 500; a worker whose
task meets the outage waits and tries again, and delivers once the database is back."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings

from routing.models import Delivery
from tests.conftest import deliveries_settle
from tests.factories import StoreFactory, SubscriptionFactory
from tests.live import ROOT, Reply, TcpProxy, Worker, free_port, port_accepts, wait_until, workers_paused
from tests.reliability.conftest import reliability_env, worker_new

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        "postgresql" not in settings.DATABASES["default"]["ENGINE"], reason="needs PostgreSQL behind a TCP proxy"
    ),
]


@dataclass
class Hub:
    url: str
    proxy: TcpProxy
    worker: Worker

    def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def proxied_hub(transactional_db, tmp_path) -> Iterator[Hub]:
    """gunicorn and a worker that reach PostgreSQL only through a proxy the test can cut."""
    db = settings.DATABASES["default"]
    proxy = TcpProxy((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))).start()
    database_url = f"postgres://{db.get('USER') or 'root'}@127.0.0.1:{proxy.port}/{db['NAME']}"
    env = reliability_env(DATABASE_URL=database_url, DB_CONNECT_TIMEOUT="2", LOG_LEVEL="WARNING")
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - the server's for its whole life
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "integrator.wsgi:application", f"--bind=127.0.0.1:{port}", "--threads=4"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with workers_paused():
            worker = worker_new("database", DATABASE_URL=database_url, DB_CONNECT_TIMEOUT="2").start()
            try:
                wait_until(lambda: port_accepts(port), 60, message=f"gunicorn ({tmp_path / 'gunicorn.log'})")
                yield Hub(url=f"http://127.0.0.1:{port}", proxy=proxy, worker=worker)
            finally:
                if not port_accepts(proxy.port):
                    proxy.restore()
                deliveries_settle()
                worker.stop()
    finally:
        web.terminate()
        web.wait(timeout=20)
        log.close()
        proxy.cut()


def test_database_down_api_answers_503_json_and_workers_resume(proxied_hub, subscriber):
    hub = proxied_hub
    store = StoreFactory()
    sub = SubscriptionFactory(url=subscriber.url("/erp"), message_types=["order:*"], retry_schedule=[2, 2])
    subscriber.program("/erp", Reply.ok(), Reply.error(500), Reply.ok())

    status, _, body = hub.call("POST", "/events", store.token, {"message": "order:new", "payload": {"order": {}}})
    assert status == 202, body
    subscriber.wait_for("/erp", 1)  # so that the second event meets the programmed 500
    # The second event's first attempt fails; its retry is due while the database is away.
    status, _, body = hub.call("POST", "/events", store.token, {"message": "order:updated", "payload": {"n": 2}})
    assert status == 202, body
    second = Delivery.objects.get(event__uid=json.loads(body)["event_id"], subscription=sub)
    wait_until(lambda: Delivery.objects.filter(pk=second.pk, state="retrying").exists(), 30, message="first try failed")

    hub.proxy.cut()
    for method, path, payload in (
        ("POST", "/events", {"message": "order:new", "payload": {}}),
        ("POST", "/events/batch", [{"message": "order:new", "payload": {}}]),
        ("GET", f"/events/{json.loads(body)['event_id']}", None),
        ("GET", "/events", None),
    ):
        status, headers, reply = hub.call(method, path, store.token, payload)
        assert status == 503, (method, path, status, reply[:300])
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(reply)["error"] == "service_unavailable"
        assert int(headers["Retry-After"]) > 0

    # The worker meets the outage when the retry comes due, and keeps trying instead of dropping it.
    def retried_on_the_outage() -> bool:
        return any(
            "routing.deliveries_pump" in line and "Retry in" in line and "OperationalError" in line
            for line in hub.worker.log().splitlines()
        )

    wait_until(retried_on_the_outage, 30, message="the worker retrying its task while the database is down")
    second.refresh_from_db()
    assert second.state == "retrying" and second.attempt_count == 1

    hub.proxy.restore()
    wait_until(lambda: Delivery.objects.filter(pk=second.pk, state="delivered").exists(), 60, message="resumed")
    status, _, body = hub.call("POST", "/events", store.token, {"message": "order:new", "payload": {"n": 3}})
    assert status == 202, body
    wait_until(lambda: len(subscriber.received("/erp")) == 4, 30, message="the event pushed after the outage")
