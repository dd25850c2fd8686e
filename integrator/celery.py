"""The Celery app: configuration comes from Django settings (CELERY_* names)."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")

app = Celery("integrator", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def _worker_metrics_serve(**kwargs: object) -> None:
    # Opt-in, so that test workers and several workers on one host never fight over a port.
    from django.conf import settings

    if settings.HUB_WORKER_METRICS_PORT:
        from integrator.metrics import worker_metrics_serve

        worker_metrics_serve(port=settings.HUB_WORKER_METRICS_PORT)


@signals.task_prerun.connect
@signals.task_postrun.connect
def _db_connections_tidy(**kwargs: object) -> None:
    # What Django does around every web request: close a connection that broke or is older than
    # CONN_MAX_AGE, and health-check the next one on first use. Celery's own handling (closing
    # every connection around every task) is turned down by CELERY_DB_REUSE_MAX in settings.
    from django.db import close_old_connections

    close_old_connections()
