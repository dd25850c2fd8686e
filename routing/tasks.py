"""Celery tasks: each loads by id and calls one service."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from routing.fanout import deliveries_fan_out
from routing.pump import deliveries_pump
from routing.schedules import schedules_run
from routing.sweeper import deliveries_sweep
from routing.wakeup import FANOUT_TASK, PUMP_TASK, TURN_NEW, pump_begin, pumps_started

# The database went away (restart, failover, network): the task waits and tries again rather than
# being acked as failed, which would leave its delivery to the sweeper's much slower lost-message check.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


def database_retry_countdown(retries: int) -> float:
    """1, 2, 4, ... seconds, capped: soon enough to resume quickly, slow enough not to hammer."""
    return float(min(2**retries, settings.HUB_DATABASE_RETRY_MAX_SECONDS))


@shared_task(bind=True, name=PUMP_TASK, ignore_result=True, max_retries=None)
def deliveries_pump_task(self: Any, subscription_id: int, turn: str = TURN_NEW) -> None:
    try:
        if pump_begin(subscription_id, turn=turn):
            deliveries_pump(subscription_id=subscription_id, marked=turn != TURN_NEW)
    except DATABASE_UNAVAILABLE as exc:
        raise self.retry(exc=exc, countdown=database_retry_countdown(self.request.retries)) from exc


@shared_task(bind=True, name=FANOUT_TASK, ignore_result=True, max_retries=None)
def deliveries_fan_out_task(self: Any, delivery_ids: list[int], subscription_ids: list[int]) -> None:
    try:
        pumps_started(subscription_ids)
        deliveries_fan_out(delivery_ids=delivery_ids, endpoints=subscription_ids)
    except DATABASE_UNAVAILABLE as exc:
        raise self.retry(exc=exc, countdown=database_retry_countdown(self.request.retries)) from exc


@shared_task(name="routing.deliveries_sweep", ignore_result=True)
def deliveries_sweep_task() -> None:
    deliveries_sweep()


@shared_task(name="routing.schedules_run", ignore_result=True)
def schedules_run_task() -> None:
    schedules_run()
