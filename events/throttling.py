"""Per-store rate limits, counted in Django's cache (Redis in production) so that every web worker
shares one count."""

from __future__ import annotations

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from events.models import Store

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class StoreRateThrottle(SimpleRateThrottle):
    """One bucket per store and scope: `store_write` for pushes, `store_read` for reads.

    Rates come from settings.HUB_RATE_LIMITS, read per request rather than at import as DRF's
    default does, so that a changed setting takes effect without a restart of the class.
    """

    cache_format = "throttle_%(scope)s_%(ident)s"

    def __init__(self) -> None:
        # The scope depends on the request's method, so the rate is resolved in allow_request.
        self.rate = None
        self.num_requests, self.duration = None, None

    def allow_request(self, request: Request, view: object) -> bool:
        self.scope = "store_read" if request.method in SAFE_METHODS else "store_write"
        self.rate = settings.HUB_RATE_LIMITS.get(self.scope) or None
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: object) -> str | None:
        store = request.user
        if not isinstance(store, Store):
            return None
        # created_at is part of the identity: a test database (or SQLite after a delete) can hand a
        # store id to a new store, which must not inherit an old store's history.
        ident = f"{store.pk}-{int(store.created_at.timestamp() * 1_000_000)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
