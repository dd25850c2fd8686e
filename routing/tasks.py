"""Celery tasks: each loads by id and calls one service."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from routing import dispatch, schedules, services

# The database went away (restart, failover, network): the task waits and tries again rather than
# being acked as failed, which would leave its delivery to the sweeper's much slower lost-message check.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


def database_retry_countdown(retries: int) -> float:
    """1, 2, 4, ... seconds, capped: soon enough to resume quickly, slow enough not to hammer."""
    return float(min(2**retries, settings.HUB_DATABASE_RETRY_MAX_SECONDS))


@shared_task(bind=True, name="routing.deliveries_pump", ignore_result=True, max_retries=None)
def deliveries_pump_task(self: Any, subscription_id: int) -> None:
    try:
        dispatch.pump_started(subscription_id)
        services.deliveries_pump(subscription_id=subscription_id)
    except DATABASE_UNAVAILABLE as exc:
        raise self.retry(exc=exc, countdown=database_retry_countdown(self.request.retries)) from exc


@shared_task(bind=True, name="routing.delivery_attempt", ignore_result=True, max_retries=None)
def delivery_attempt_task(self: Any, delivery_id: int) -> None:
    """A message of one delivery, as hubs before batched sending published them: still in a broker
    after an upgrade, it wakes that delivery's endpoint."""
    try:
        subscription_id = services.delivery_subscription_id(delivery_id=delivery_id)
        if subscription_id is not None:
            services.deliveries_pump(subscription_id=subscription_id)
    except DATABASE_UNAVAILABLE as exc:
        raise self.retry(exc=exc, countdown=database_retry_countdown(self.request.retries)) from exc


@shared_task(name="routing.deliveries_sweep", ignore_result=True)
def deliveries_sweep_task() -> None:
    services.deliveries_sweep()


@shared_task(name="routing.schedules_run", ignore_result=True)
def schedules_run_task() -> None:
    schedules.schedules_run()
