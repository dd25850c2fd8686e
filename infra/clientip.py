"""The address a request came from, for counting failed admin logins (django-axes)."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR; behind HUB_TRUSTED_PROXY_COUNT proxies, the address the outermost one saw.

    Each proxy appends to X-Forwarded-For the address it received from, so that address is the
    N-th from the right; whatever stands left of it was written by the client and is never used."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.HUB_TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    if len(forwarded) < proxies:
        return remote
    candidate = forwarded[-proxies]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
