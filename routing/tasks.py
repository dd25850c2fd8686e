"""Celery tasks: each loads by id and calls one service."""

from __future__ import annotations

from celery import shared_task

from routing import services


@shared_task(name="routing.delivery_attempt", ignore_result=True)
def delivery_attempt_task(delivery_id: int) -> None:
    services.delivery_attempt(delivery_id=delivery_id)


@shared_task(name="routing.deliveries_sweep", ignore_result=True)
def deliveries_sweep_task() -> None:
    services.deliveries_sweep()
