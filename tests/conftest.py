from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from events.models import Store
from tests.factories import StoreFactory
from tests.isolation import worker_environment
from tests.live import ROOT, Subscriber, Worker, queue_purge, wait_until


def pytest_configure(config: pytest.Config) -> None:
    # The tests' subscribers listen on 127.0.0.1, which the SSRF guard refuses by default. Allow it
    # here and in the environment that worker processes started by the tests inherit; the guard's
    # own tests turn it back off.
    from django.conf import settings

    os.environ["HUB_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = True
    # Schedules of a second or two, so that live tests of pulling watch several ticks.
    os.environ["HUB_SCHEDULE_MIN_INTERVAL_SECONDS"] = "1"
    settings.HUB_SCHEDULE_MIN_INTERVAL_SECONDS = 1
    _flush_retry_deadlocks()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: list) -> None:
    """scripts/test runs the suite on pytest-xdist workers: each gets its own Redis database and var
    directory (tests/isolation.py), set before it imports the settings."""
    for spec in specs:
        spec.env.update(worker_environment(dict(os.environ), spec.id, ROOT))


def _flush_retry_deadlocks() -> None:
    """A transactional test's closing flush (TRUNCATE of every table) locks each partition of the
    partitioned tables, and the session's worker (its beat sweeps) may hold some of them while
    waiting for another: PostgreSQL breaks that deadlock by failing one side, the flush included.
    The flush is retried (the sweep just runs again at its next beat); any other error still fails."""
    from django.test import TransactionTestCase

    teardown = TransactionTestCase._fixture_teardown

    def retrying(self: TransactionTestCase) -> None:
        for attempt in range(5):
            try:
                return teardown(self)
            except Exception as exc:  # noqa: BLE001 - flush wraps the database's error in a CommandError
                if not _deadlock(exc) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    TransactionTestCase._fixture_teardown = retrying


def _deadlock(exc: BaseException | None) -> bool:
    """PostgreSQL's deadlock_detected anywhere in the chain of causes."""
    while exc is not None:
        if getattr(exc, "sqlstate", None) == "40P01":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.fixture(autouse=True)
def _store_cache_clear() -> Iterator[None]:
    """Each test starts with no store remembered by authentication (events.selectors), no
    subscriptions remembered by routing (routing.subscriptions), no endpoint's pace
    (routing.pacing), no rate-limit leases (events.throttling) and, on the embedded default, no
    endpoint's marks in the cache."""
    from events.selectors import store_cache_clear
    from events.throttling import leases
    from routing.pacing import paces_forget
    from routing.subscriptions import subscriptions_cache_clear

    clears = (store_cache_clear, subscriptions_cache_clear, paces_forget, leases.clear, _endpoint_marks_clear)
    for clear in clears:
        clear()
    yield
    for clear in clears:
        clear()


def _endpoint_marks_clear() -> None:
    """Endpoints' marks (routing.wakeup; the backlog lane's last up to a minute) from an earlier
    test, or an earlier run, would be a new endpoint's: SQLite gives ids again after a flush, and
    a test database made anew starts its ids again. On Redis only the marks go: the broker's queues
    may share its database."""
    from django.core.cache import caches
    from django.core.cache.backends.filebased import FileBasedCache

    cache = caches["default"]
    if isinstance(cache, FileBasedCache):
        cache.clear()
        return
    get_client = getattr(getattr(cache, "_cache", None), "get_client", None)
    if get_client is not None:
        client = get_client(write=True)
        marks = list(client.scan_iter(match="*:pump-*", count=1000))
        if marks:
            client.delete(*marks)


@pytest.fixture
def admin_browser_login(db) -> Callable[[], tuple[Client, Any]]:
    """A superuser, and a CSRF-checking client that logs in as a browser does (the token read from
    the login page's cookie): returns the client and the login's answer."""
    User.objects.create_superuser("boss", "boss@example.com", "pw-long-enough-1")

    def login() -> tuple[Client, Any]:
        client = Client(enforce_csrf_checks=True)
        client.get("/admin/login/")
        token = client.cookies["csrftoken"].value
        answer = client.post(
            "/admin/login/", {"username": "boss", "password": "pw-long-enough-1", "csrfmiddlewaretoken": token}
        )
        return client, answer

    return login


@pytest.fixture
def store(db) -> Store:
    return StoreFactory()


@pytest.fixture
def client_for() -> Callable[[Store], APIClient]:
    def make(store: Store) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {store.token}")
        return client

    return make


@pytest.fixture
def api(store, client_for) -> APIClient:
    """An API client authenticated as `store`."""
    return client_for(store)


# --- Live services: a real HTTP subscriber and a real Celery worker (see tests/live.py) ------------
TEST_QUEUE = "hub-test"


@pytest.fixture(scope="session", autouse=True)
def _test_queue() -> None:
    """Whatever a test publishes goes to the test worker's queue, never to a real worker's."""
    from integrator.celery import app

    app.conf.task_default_queue = TEST_QUEUE


@pytest.fixture(scope="session")
def _subscriber_server() -> Iterator[Subscriber]:
    server = Subscriber().start()
    yield server
    server.stop()


@pytest.fixture
def subscriber(_subscriber_server: Subscriber) -> Subscriber:
    """A real HTTP endpoint on 127.0.0.1; program replies per path, read what it received."""
    _subscriber_server.reset()
    return _subscriber_server


def _worker_env(database: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SQLITE_PATH")}
    if "sqlite" in database["ENGINE"]:
        env["SQLITE_PATH"] = str(database["NAME"])
    else:
        from urllib.parse import quote

        auth = quote(database.get("USER") or "")
        if database.get("PASSWORD"):
            auth += ":" + quote(database["PASSWORD"])
        host = f"{database.get('HOST') or '127.0.0.1'}:{database.get('PORT') or 5432}"
        env["DATABASE_URL"] = f"postgres://{auth}@{host}/{database['NAME']}"
    env.update(
        CELERY_QUEUE=TEST_QUEUE,
        # Said here as well as in pytest_configure: the worker delivers to the 127.0.0.1 subscriber.
        HUB_ALLOW_PRIVATE_DESTINATIONS="1",
        HUB_SWEEP_INTERVAL_SECONDS="1",
        HUB_SWEEP_LOST_AFTER_SECONDS="3",
        HUB_SCHEDULES_POLL_SECONDS="0.5",
        LOG_JSON="true",  # as production logs: tests read the worker's JSON lines
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def worker(django_db_setup, _test_queue) -> Iterator[Worker]:
    """`celery -A integrator worker -B` on the test database and the real broker (Redis when
    REDIS_URL is set, else the filesystem broker), started once per session on a queue of its own."""
    from django.conf import settings

    # Whatever an earlier run left on the worker's queue is dropped.
    queue_purge(TEST_QUEUE)
    log_path = Path(settings.VAR_DIR) / "test-worker" / "worker.log"
    live = Worker(env=_worker_env(settings.DATABASES["default"]), log_path=log_path, queue=TEST_QUEUE).start()
    yield live
    live.stop()


UNCONSUMED_QUEUE = "hub-test-unconsumed"


@pytest.fixture
def unconsumed_queue() -> Iterator[str]:
    """Messages go to a queue no worker reads, so that none takes them (and clears their mark): for
    a transactional test whose deliveries the session's worker, once it runs, would otherwise send."""
    from integrator.celery import app

    saved = app.conf.task_default_queue
    app.conf.task_default_queue = UNCONSUMED_QUEUE
    queue_purge(UNCONSUMED_QUEUE)
    try:
        yield UNCONSUMED_QUEUE
    finally:
        queue_purge(UNCONSUMED_QUEUE)
        app.conf.task_default_queue = saved


def deliveries_settle(timeout: float = 30) -> None:
    """End of a live test: cancel what is still owed and wait for attempts on the wire to end, so
    the worker is idle when the test database is flushed (a flush racing a worker's transaction
    can deadlock)."""
    from routing.models import Delivery

    def idle() -> bool:
        Delivery.objects.filter(state__in=["pending", "retrying"]).update(state="cancelled")
        return not Delivery.objects.filter(state__in=["pending", "retrying", "delivering"]).exists()

    wait_until(idle, timeout, interval=0.2, message="no delivery left on the wire")


@pytest.fixture(autouse=True)
def _worker_idle_before_flush(request: pytest.FixtureRequest) -> Iterator[None]:
    # Any transactional test, not only those asking for `worker`: once the session's worker runs,
    # it takes whatever deliveries a later test enqueues, asked for or not.
    marker = request.node.get_closest_marker("django_db")
    live = (
        marker is not None
        and marker.kwargs.get("transaction")
        and (
            "worker" in request.fixturenames
            or any(w.process is not None and w.process.poll() is None for w in Worker.alive)
        )
    )
    if live:
        # Set up pytest-django's database helper (the django_db marker's) first, so that this
        # teardown runs before its flush.
        request.getfixturevalue("_django_db_helper")
    yield
    if live:
        deliveries_settle()


def post_in_thread(
    token: str, path: str, body: Any, barrier: threading.Barrier, answers: list, errors: list, timeout: float = 60
) -> None:
    """POST as a store from a thread of its own (with its own database connection), once every
    thread has reached `barrier`; the answer or the exception goes to the shared lists."""
    from django.db import connection

    try:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        barrier.wait(timeout=timeout)
        response = client.post(path, body, format="json")
        answers.append((response.status_code, response.json()))
    except Exception as exc:  # noqa: BLE001 - reported to the test thread
        errors.append(exc)
    finally:
        connection.close()


def posts_at_once(token: str, path: str, body: Any, count: int, timeout: float = 60) -> tuple[list, list]:
    """`count` identical POSTs released together: (answers as (status, json), exceptions)."""
    barrier = threading.Barrier(count)
    answers: list = []
    errors: list = []
    threads = [
        threading.Thread(target=post_in_thread, args=(token, path, body, barrier, answers, errors, timeout))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return answers, errors


@pytest.fixture
def until() -> Callable[..., object]:
    """wait_until(predicate, timeout=...) as a fixture, for tests that prefer not to import it."""
    return wait_until
