"""What a locked-out admin login sees (django-axes calls lockout_response; settings.AXES_*)."""

from __future__ import annotations

import logging
from typing import Any

from axes.helpers import get_client_username, get_cool_off
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

logger = logging.getLogger(__name__)


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
