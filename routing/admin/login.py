"""The admin login's throttle (django-axes, settings.AXES_*): what a locked-out login sees, and what
a successful one forgets."""

from __future__ import annotations

import logging
from typing import Any

from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from infra.clientip import client_ip

logger = logging.getLogger(__name__)

# What axes' AccessAttempt.username column holds.
_USERNAME_MAX_CHARS = 255


def login_username(request: HttpRequest, credentials: dict[str, Any] | None = None) -> str | None:
    """The username a failure is counted under: as typed, but storable. The admin's login form does
    not enforce the username's length, and a NUL or a lone surrogate cannot be written to PostgreSQL,
    so axes' record of the failure would be a 500 instead."""
    field = settings.AXES_USERNAME_FORM_FIELD
    source = credentials if credentials else getattr(request, "data", request.POST)
    username = source.get(field)
    if not isinstance(username, str):
        return username
    cleaned = username.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return cleaned[:_USERNAME_MAX_CHARS]


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """429 with the admin's look, saying how long to wait; logged with the address and username."""
    cool_off = get_cool_off(request)
    minutes = max(1, round(cool_off.total_seconds() / 60)) if cool_off else None
    username = get_client_username(request, credentials) or ""
    logger.warning(
        "Admin login refused: too many failed logins (username %r, address %s).",
        username[:150],
        getattr(request, "axes_ip_address", None) or request.META.get("REMOTE_ADDR", ""),
    )
    context = {**admin.site.each_context(request), "title": "Too many failed logins", "minutes": minutes}
    response = TemplateResponse(request, "admin/login_locked.html", context, status=429)
    if cool_off:
        response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response.render()


@receiver(user_logged_in, dispatch_uid="hub-login-failures-forget")
def login_failures_forget(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """The right password forgets that username's failures from that address, and no others: the
    address's count still holds what was tried against other usernames."""
    if request is None:
        return
    AccessAttempt.objects.filter(username=user.get_username(), ip_address=client_ip(request)).delete()
