"""Management keys: `Authorization: Bearer hubm_...`, hashed at rest, scoped, rate-limited.

A store token sent here authenticates (as a store) and is then refused with 403: the caller is
known, just not allowed. Anything else that is not a valid key is a 401."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.utils import timezone
from rest_framework import permissions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from events.authentication import StoreTokenAuthentication
from events.models import Store
from events.throttling import SAFE_METHODS, leases
from ops.models import KEY_PREFIX, ManagementKey, key_hash

# Touching last_used_at on every call would add a write per request; once a minute is plenty.
LAST_USED_RESOLUTION_SECONDS = 60


class ManagementKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[ManagementKey | Store, str] | None:
        header = get_authorization_header(request).decode("latin-1").strip()
        scheme, _, value = header.partition(" ")
        key = value.strip() if scheme.lower() == "bearer" else ""
        if not key.startswith(KEY_PREFIX):
            return self._store(request)
        digest = key_hash(key)
        found = ManagementKey.objects.filter(key_hash=digest).first()
        # Found by hash, compared in constant time: timing says nothing about how close a guess came.
        if found is None or not hmac.compare_digest(found.key_hash, digest):
            raise AuthenticationFailed("The management key is not valid.")
        if not found.is_active:
            raise AuthenticationFailed(f"The management key '{found.name}' is disabled.")
        now = timezone.now()
        if found.last_used_at is None or (now - found.last_used_at).total_seconds() > LAST_USED_RESOLUTION_SECONDS:
            ManagementKey.objects.filter(pk=found.pk).update(last_used_at=now)
            found.last_used_at = now
        return found, key

    def _store(self, request: Request) -> tuple[Store, str] | None:
        """A store's credentials are recognised so that the answer is 403, not 401."""
        try:
            return StoreTokenAuthentication().authenticate(request)
        except AuthenticationFailed:
            raise AuthenticationFailed(
                "Send a management key: 'Authorization: Bearer hubm_...' (manage.py createmanagementkey)."
            ) from None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="hub-manage"'


class HasManagementScope(permissions.BasePermission):
    """The view names the scope its method needs (`view.scope_for(request)`); the key must hold it."""

    def has_permission(self, request: Request, view: object) -> bool:
        principal = request.user
        if isinstance(principal, Store):
            raise PermissionDenied("A store token cannot manage the hub; use a management key (hubm_...).")
        if not isinstance(principal, ManagementKey):
            return False
        scope = view.scope_for(request)  # type: ignore[attr-defined]
        if not principal.has_scope(scope):
            raise PermissionDenied(f"The management key '{principal.name}' lacks the scope '{scope}'.")
        return True


class ManagementRateThrottle(SimpleRateThrottle):
    """One bucket per key (HUB_RATE_LIMIT_MANAGE), counted like the stores' (events.throttling):
    in Redis shared by every web process, or DRF's own count on any other cache."""

    scope = "manage"
    cache_format = "throttle_%(scope)s_%(ident)s"

    def __init__(self) -> None:
        self.rate = None
        self.num_requests, self.duration = None, None
        self._wait: float | None = None

    def allow_request(self, request: Request, view: object) -> bool:
        self.rate = settings.HUB_RATE_LIMITS.get(self.scope) or None
        self.num_requests, self.duration = self.parse_rate(self.rate)
        backend = caches["default"]
        ident = self._ident(request)
        if self.rate is None or ident is None or not isinstance(backend, RedisCache):
            return super().allow_request(request, view)
        key = backend.make_and_validate_key(f"throttle_log_{self.scope}_{ident}")
        self._wait = leases.admit(backend, key, self.num_requests, self.duration)
        return self._wait is None

    def wait(self) -> float | None:
        return self._wait if self._wait is not None else super().wait()

    @staticmethod
    def _ident(request: Request) -> str | None:
        principal = request.user
        if not isinstance(principal, ManagementKey):
            return None
        # created_at is part of the identity, so a key reusing a deleted key's id starts afresh.
        return f"{principal.pk}-{int(principal.created_at.timestamp() * 1_000_000)}"

    def get_cache_key(self, request: Request, view: object) -> str | None:
        ident = self._ident(request)
        return None if ident is None else self.cache_format % {"scope": self.scope, "ident": ident}


def scope_for_method(resource: str, request: Request) -> str:
    return f"{resource}:{'read' if request.method in SAFE_METHODS else 'write'}"
