"""Settings of the peer project: what a django-webhook user would run in production, on the bench's
PostgreSQL and Redis. The bench starts it with DATABASE_URL naming its own `<bench database>_peer`,
REDIS_URL, CELERY_QUEUE naming a private queue, and HUB_VAR_DIR for the embedded fallbacks."""

import os
from pathlib import Path

import dj_database_url

VAR_DIR = Path(os.environ.get("HUB_VAR_DIR", "var/bench"))
SECRET_KEY = "bench-peer-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "django_webhook",
    "bench.peer.apps.PeerConfig",
]
# Django's own defaults for an API project, minus sessions, CSRF and messages it does not use.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "bench.peer.urls"
WSGI_APPLICATION = "bench.peer.wsgi.application"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_database_url = os.environ.get("DATABASE_URL", "")
DATABASES = {
    # The hub's DB_CONN_MAX_AGE default and health checks: one connection per thread, kept.
    "default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)
    if _database_url
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "peer.sqlite3")}
}

CELERY_BROKER_URL = os.environ.get("REDIS_URL", "") or "filesystem://"
if CELERY_BROKER_URL == "filesystem://":
    _broker = VAR_DIR / "peer-broker"
    _broker.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(_broker), "data_folder_out": str(_broker)}
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "peer")
CELERY_TASK_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}

# django-webhook's documented setup: the models whose saves fire webhooks, the cached lookup of
# subscribed webhooks (its default), its audit log (written by the task).
DJANGO_WEBHOOK = {"MODELS": ["peer.PeerEvent"], "USE_CACHE": True, "STORE_EVENTS": True}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
