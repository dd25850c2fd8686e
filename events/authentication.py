"""Store authentication: a bearer token, or the headers older store extensions send."""

from __future__ import annotations

from urllib.parse import unquote

from django.utils import timezone
from rest_framework import permissions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework.request import Request

from events.models import Store, token_hash
from events.selectors import store_for_token_digest, store_last_used_noted

# last_used_at is touched at most this often, not with a write per request.
LAST_USED_RESOLUTION_SECONDS = 60


def _token_from_request(request: Request) -> tuple[str | None, str | None]:
    """(X-Hub-Store if sent, token) from whichever scheme the client used."""
    meta = request.META
    store_name = meta.get("HTTP_X_HUB_STORE") or None
    header = get_authorization_header(request).decode("latin-1").strip()
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationFailed("The Authorization header must be 'Bearer <store token>'.")
        return store_name, value.strip()
    if meta.get("HTTP_X_HUB_ACCESS_TOKEN"):
        return store_name, meta["HTTP_X_HUB_ACCESS_TOKEN"].strip()
    if meta.get("HTTP_X_AUGURY_TOKEN"):
        return store_name, meta["HTTP_X_AUGURY_TOKEN"].strip()
    return None, None


def _store_header_spellings(value: str) -> set[str]:
    """What an X-Hub-Store value may mean: raw UTF-8 arrives as latin-1, and percent-encoded names too."""
    spellings = {value, unquote(value)}
    try:
        spellings.add(value.encode("latin-1").decode("utf-8"))
    except UnicodeError:
        pass
    return spellings


class StoreTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Store, str] | None:
        store_name, token = _token_from_request(request)
        if token is None:
            return None
        digest = token_hash(token)
        now = timezone.now()
        store = store_for_token_digest(digest, now=now)
        # Lookup by hash, constant-time comparison: timing says nothing about how close a guess came.
        if store is None or not store.token_matches(token, now=now):
            raise AuthenticationFailed("The store token is not valid.")
        if store_name is not None and not {store.name, str(store.pk)} & _store_header_spellings(store_name):
            raise AuthenticationFailed("X-Hub-Store does not match the store of this token.")
        if store.last_used_at is None or (now - store.last_used_at).total_seconds() > LAST_USED_RESOLUTION_SECONDS:
            Store.objects.filter(pk=store.pk).update(last_used_at=now)
            store.last_used_at = now
            store_last_used_noted(digest, at=now)
        return store, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="hub"'


class IsActiveStore(permissions.BasePermission):
    def has_permission(self, request: Request, view: object) -> bool:
        store = request.user
        if not isinstance(store, Store):
            return False
        if not store.is_active:
            raise PermissionDenied(f"The store '{store.name}' is disabled.")
        return True
