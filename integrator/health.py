"""Liveness and readiness for load balancers and orchestrators: plain Django views, no auth.

/healthz answers as long as the process can serve a request (it touches nothing else), so a
database outage never gets healthy web processes restarted. /readyz checks what a request needs:
the database and the broker, each with its latency, and answers 503 when any is unreachable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from integrator.logfilters import secrets_redact


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def database_check() -> None:
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        # A broken connection would fail every later request of this thread too.
        connection.close()
        raise


def broker_check() -> None:
    from integrator.celery import app

    timeout = settings.HUB_READY_TIMEOUT_SECONDS
    with app.connection_for_write(connect_timeout=timeout) as conn:
        # One try, not kombu's default of retrying forever: a probe must answer.
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        if conn.transport_cls in ("redis", "rediss") or conn.transport.driver_type == "redis":
            conn.default_channel.client.ping()


CHECKS: dict[str, Callable[[], None]] = {"database": database_check, "broker": broker_check}


def dependency_probe(check: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with its reason
        return {
            "ok": False,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "error": secrets_redact(f"{type(exc).__name__}: {exc}")[:300],
        }
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {name: dependency_probe(check) for name, check in CHECKS.items()}
    ready = all(result["ok"] for result in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
