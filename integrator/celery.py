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
