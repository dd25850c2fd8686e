"""The peer: django-webhook (PyPI) in a small Django project of its own, measured beside the hub
by the single-ingest phase (bench/phases.py). Started only by the bench, never imported by the hub
or by the bench process itself (its Celery app would become the current one there)."""

# As a django-webhook user sets it up: the Celery app exists before django_webhook.tasks is
# imported (its tasks bind to whichever app is current then).
from bench.peer.celery import app

__all__ = ["app"]
