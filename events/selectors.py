"""Reading events for the API and the admin, and stores for authentication."""

from __future__ import annotations

import copy
import uuid
from datetime import datetime

from django.conf import settings
from django.db.models import Q, QuerySet

from events.models import Event, Store
from infra.ttl import TtlCache


def event_get(*, store: Store, event_id: str) -> Event | None:
    """A store's own event by its public id; another store's event is simply not found."""
    try:
        uid = uuid.UUID(str(event_id))
    except ValueError:
        return None
    return Event.objects.filter(store=store, uid=uid).first()


def event_list(
    *,
    store: Store,
    message: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    resource_key: str | None = None,
) -> QuerySet[Event]:
    """A store's events, newest first; `message` is a canonical name or 'resource:*'."""
    qs = Event.objects.filter(store=store)
    if message and message.endswith(":*"):
        qs = qs.filter(message__startswith=message[:-1])
    elif message:
        qs = qs.filter(message=message)
    if status:
        qs = qs.filter(status=status)
    if since:
        qs = qs.filter(created_at__gte=since)
    if resource_key:
        qs = qs.filter(resource_key=resource_key)
    return qs.order_by("-id")


# token digest -> store; only matching tokens are kept, so the stores' tokens bound its size.
_stores_by_digest: TtlCache[str, Store] = TtlCache()


def store_for_token_digest(digest: str, *, now: datetime) -> Store | None:
    """The store whose current or previous token has this digest, remembered a while; a copy per caller."""
    hit = _stores_by_digest.get(digest)
    if hit is not None:
        return _store_copy(hit)
    store = (
        Store.objects.filter(Q(token_hash=digest) | Q(previous_token_hash=digest, previous_token_expires_at__gt=now))
        .order_by("pk")
        .first()
    )
    if store is not None:
        _stores_by_digest.put(digest, copy.copy(store), settings.HUB_STORE_AUTH_CACHE_SECONDS)
    return store


def _store_copy(store: Store) -> Store:
    """copy.copy(store), whose pickling round trip (__reduce__, a model lookup, __setstate__'s
    version check) cost more than the copy: the same fields, and the state copied as it copies it."""
    copied = Store.__new__(Store)
    copied.__dict__.update(store.__getstate__())
    return copied


def store_last_used_noted(digest: str, *, at: datetime) -> None:
    """Keep the remembered copy's last_used_at in step, so it is not written on every request."""
    hit = _stores_by_digest.get(digest)
    if hit is not None:
        hit.last_used_at = at


def store_cache_clear() -> None:
    """Forget every remembered store (after a change to a store in this process, and in tests)."""
    _stores_by_digest.clear()
