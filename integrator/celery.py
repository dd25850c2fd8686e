"""The Celery app: configuration comes from Django settings (CELERY_* names)."""

import os

from celery import Celery, signals
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")

# The embedded broker (filesystem://) writes its messages atomically: integrator/broker_fs.py.
TRANSPORT_ALIASES["filesystem"] = "integrator.broker_fs:Transport"
# Redis as the broker: a worker that loses it while busy reconnects instead of exiting (integrator/broker_redis.py).
TRANSPORT_ALIASES["redis"] = TRANSPORT_ALIASES["rediss"] = "integrator.broker_redis:Transport"

app = Celery("integrator", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.celeryd_after_setup.connect
def _backlog_lanes_consume(sender: object, instance: object, **kwargs: object) -> None:
    # After each queue the worker takes from, its backlog lane (routing.wakeup): a pump out of time
    # waits there, taken only when the queues before it are empty.
    from routing.wakeup import BACKLOG_SUFFIX

    queues = instance.app.amqp.queues  # type: ignore[attr-defined]
    for name in list(queues.consume_from):
        if not name.endswith(BACKLOG_SUFFIX):
            queues.select_add(f"{name}{BACKLOG_SUFFIX}")


@signals.beat_init.connect
def _beat_stale_watch(sender: object, **kwargs: object) -> None:
    # Only a beat service started for real (not a scheduler made in a test) ends its process.
    from django.conf import settings

    from integrator.beat import HeartbeatScheduler, StaleWatch

    scheduler = sender.scheduler  # type: ignore[attr-defined]
    if isinstance(scheduler, HeartbeatScheduler):
        watch = StaleWatch(scheduler, stale_seconds=settings.HUB_BEAT_STALE_SECONDS)
        sender.stale_watch = watch  # type: ignore[attr-defined]
        watch.start()


@signals.beat_embedded_init.connect
def _beat_stale_watch_embedded(sender: object, **kwargs: object) -> None:
    # Sent right after beat_init, before the first tick: the watch is to stop the worker too.
    watch = getattr(sender, "stale_watch", None)
    if watch is not None:
        watch.embedded = True


@signals.worker_init.connect
def _worker_metrics_serve(**kwargs: object) -> None:
    # Opt-in, so that test workers and several workers on one host never fight over a port.
    from django.conf import settings

    if settings.HUB_WORKER_METRICS_PORT:
        from infra.metrics import worker_metrics_serve

        worker_metrics_serve(port=settings.HUB_WORKER_METRICS_PORT)


@signals.worker_init.connect
def _worker_tracing(**kwargs: object) -> None:
    # Before the pool forks: the span exporter's thread is started again in each child.
    from infra.tracing import tracing_setup

    tracing_setup()


@signals.worker_init.connect
def _worker_async_commit(**kwargs: object) -> None:
    # Before the pool forks, so pool processes inherit it; web processes keep synchronous commits.
    from django.conf import settings
    from django.db.backends.signals import connection_created

    if settings.HUB_WORKER_ASYNC_COMMIT:
        connection_created.connect(_async_commit_set, weak=False, dispatch_uid="hub-worker-async-commit")


def _async_commit_set(sender: object, connection: object, **kwargs: object) -> None:
    """A worker's commits do not wait for the WAL flush: a PostgreSQL crash can only lose its latest
    claims and outcomes, so a delivery is sent again, as at-least-once allows. Pushes stay synchronous."""
    if getattr(connection, "vendor", "") == "postgresql":
        with connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SET synchronous_commit TO off")


@signals.worker_process_init.connect
def _worker_objects_freeze(**kwargs: object) -> None:
    # In each pool process, as gunicorn.conf.py's post_worker_init does in each web worker.
    from integrator.memory import loaded_objects_freeze

    loaded_objects_freeze()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _db_connections_tidy(**kwargs: object) -> None:
    # As Django does around a web request: drop a broken or too old connection, keep the rest.
    from django.db import close_old_connections

    close_old_connections()
