"""System checks for the routing app's security settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from routing.encryption import fernet


@register(Tags.security)
def encryption_keys_check(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    try:
        fernet()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="hub.E001")]
    return []


@register(Tags.security, deploy=True)
def deploy_security_check(app_configs: Any = None, **kwargs: Any) -> list[Error | Warning]:
    problems: list[Error | Warning] = []
    if not settings.HUB_ENCRYPTION_KEYS:
        problems.append(
            Error(
                "HUB_ENCRYPTION_KEYS is not set: signing secrets are encrypted with a key derived from SECRET_KEY.",
                hint="Set HUB_ENCRYPTION_KEYS to one or more Fernet keys.",
                id="hub.E002",
            )
        )
    if settings.HUB_ALLOW_PRIVATE_DESTINATIONS:
        problems.append(
            Warning(
                "HUB_ALLOW_PRIVATE_DESTINATIONS is on: deliveries may reach loopback and private addresses.",
                id="hub.W001",
            )
        )
    if not getattr(settings, "IS_PRODUCTION", False):
        problems.append(
            Warning("HUB_ENV is not 'production': production-only requirements are not enforced.", id="hub.W002")
        )
    return problems


@register()
def delivery_time_limits_check(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A hold limit shorter than an attempt allows a second attempt meanwhile; a short Celery limit cuts a pump."""
    from routing.transport.exchange import TIMEOUT_MAX_SECONDS

    problems: list[Error] = []
    if not settings.HUB_DELIVERY_LEASE_MARGIN_SECONDS > 0:
        problems.append(
            Error(
                "HUB_DELIVERY_LEASE_MARGIN_SECONDS must be more than 0: a lease must outlive the attempt.",
                id="hub.E003",
            )
        )
    if not settings.HUB_LEASE_SECONDS > 0:
        problems.append(
            Error(
                "HUB_LEASE_SECONDS must be more than 0: a batch's lease is renewed every quarter of it.",
                id="hub.E005",
            )
        )
    turn_longest = settings.HUB_DELIVERY_PUMP_SECONDS * (1 + settings.HUB_DELIVERY_PUMP_JITTER)
    longest = turn_longest + TIMEOUT_MAX_SECONDS + settings.HUB_DELIVERY_LEASE_MARGIN_SECONDS
    if settings.CELERY_TASK_SOFT_TIME_LIMIT < longest:
        problems.append(
            Error(
                f"CELERY_TASK_SOFT_TIME_LIMIT ({settings.CELERY_TASK_SOFT_TIME_LIMIT}) is below the longest pump"
                f" ({longest:g} s): Celery would stop a pump in the middle of an attempt.",
                id="hub.E004",
            )
        )
    return problems


@register(Tags.database)
def match_filters_check(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Warning]:
    """A stored `match` pattern that RE2 refuses never matches; say which (a database check)."""
    from routing.matching import regex_problem
    from routing.models import Subscription

    problems: list[Warning] = []
    for alias in databases or ():
        try:
            rows = list(Subscription.objects.using(alias).values_list("pk", "name", "filters"))
        except DatabaseError:
            continue  # not migrated yet: nothing stored to check
        for pk, name, filters in rows:
            for index, spec in enumerate(filters if isinstance(filters, list) else [], start=1):
                if not isinstance(spec, dict) or spec.get("op") != "match" or not isinstance(spec.get("value"), str):
                    continue
                problem = regex_problem(spec["value"])
                if problem:
                    problems.append(
                        Warning(
                            f"Subscription {pk} ({name}): filter {index} (match) {problem}; it never matches.",
                            hint="Edit the subscription in the admin and rewrite the pattern in RE2 syntax.",
                            obj=f"routing.Subscription:{pk}",
                            id="hub.W003",
                        )
                    )
    return problems
