"""Periodic operations (celery beat): each a few lines that call one service."""

from __future__ import annotations

from celery import shared_task

from ops import partitions, services


@shared_task(name="ops.events_retention", ignore_result=True)
def events_retention_task() -> None:
    services.events_retention_purge()


@shared_task(name="ops.partitions_ahead", ignore_result=True)
def partitions_ahead_task() -> None:
    partitions.partitions_ahead()


@shared_task(name="ops.partitions_analyze", ignore_result=True)
def partitions_analyze_task() -> None:
    partitions.partitions_statistics_refresh()
