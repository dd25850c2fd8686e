import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from rest_framework.test import APIClient

from events.models import Store
from events.selectors import store_cache_clear
from events.services import store_token_rotate
from infra import ttl

pytestmark = pytest.mark.django_db

ENVELOPE = {"message": "order:new", "payload": {"order": {"number": "R1"}}}


@pytest.fixture
def client() -> APIClient:
    return APIClient()


def _push(client, token: str):
    return client.post("/events", ENVELOPE, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")


def test_rotation_returns_a_new_token_and_both_work_during_the_grace_period(store, client):
    old = store.token
    new = store_token_rotate(store=store, grace_seconds=3600)
    assert new != old and new.startswith("hub_")
    assert _push(client, new).status_code == 202
    assert _push(client, old).status_code == 202
    stored = Store.objects.get(pk=store.pk)
    # Only hashes are kept, never the token itself.
    assert new not in (stored.token_hash, stored.previous_token_hash, stored.token_hint)
    assert old not in (stored.token_hash, stored.previous_token_hash)


def test_old_token_is_refused_once_the_grace_period_is_over(store, client):
    old = store.token
    new = store_token_rotate(store=store, grace_seconds=3600)
    Store.objects.filter(pk=store.pk).update(previous_token_expires_at=timezone.now() - timedelta(seconds=1))
    response = _push(client, old)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert _push(client, new).status_code == 202


def test_zero_grace_revokes_a_token_in_use_at_once(store, client):
    # The old token was just used, so this process remembers its store: the rotation forgets it.
    old = store.token
    assert _push(client, old).status_code == 202
    new = store_token_rotate(store=store, grace_seconds=0)
    assert _push(client, old).status_code == 401
    assert _push(client, new).status_code == 202


def test_a_token_revoked_by_another_process_is_refused_once_the_cache_expires(store, client, monkeypatch):
    # Another web process (simulated: the database changed behind this one's back) revokes the
    # token; this process keeps taking it only until its memory of the store runs out.

    assert _push(client, store.token).status_code == 202
    Store.objects.filter(pk=store.pk).update(token_hash="0" * 64)
    assert _push(client, store.token).status_code == 202  # within HUB_STORE_AUTH_CACHE_SECONDS
    later = time.monotonic() + django_settings.HUB_STORE_AUTH_CACHE_SECONDS + 0.1
    monkeypatch.setattr(ttl.time, "monotonic", lambda: later)
    assert _push(client, store.token).status_code == 401


def test_with_no_cache_lifetime_every_request_reads_the_store(store, client, settings):
    settings.HUB_STORE_AUTH_CACHE_SECONDS = 0
    assert _push(client, store.token).status_code == 202
    Store.objects.filter(pk=store.pk).update(token_hash="0" * 64)
    assert _push(client, store.token).status_code == 401


def test_zero_grace_revokes_the_old_token_at_once(store, client):
    old = store.token
    new = store_token_rotate(store=store, grace_seconds=0)
    assert _push(client, old).status_code == 401
    assert _push(client, new).status_code == 202


def test_default_grace_comes_from_settings(store, settings):
    settings.HUB_TOKEN_ROTATION_GRACE_SECONDS = 120
    before = timezone.now()
    store_token_rotate(store=store)
    store.refresh_from_db()
    assert before + timedelta(seconds=119) < store.previous_token_expires_at <= timezone.now() + timedelta(seconds=120)


def test_a_second_rotation_ends_the_first_tokens_grace(store, client):
    first = store.token
    second = store_token_rotate(store=store, grace_seconds=3600)
    third = store_token_rotate(store=store, grace_seconds=3600)
    assert _push(client, first).status_code == 401
    assert _push(client, second).status_code == 202
    assert _push(client, third).status_code == 202


def test_legacy_headers_accept_the_rotated_token(store, client):
    old = store.token
    store_token_rotate(store=store, grace_seconds=3600)
    response = client.post("/events", ENVELOPE, format="json", HTTP_X_HUB_STORE=store.name, HTTP_X_HUB_ACCESS_TOKEN=old)
    assert response.status_code == 202


def test_last_used_at_is_recorded_on_a_push(store, client):
    assert Store.objects.get(pk=store.pk).last_used_at is None
    assert _push(client, store.token).status_code == 202
    assert Store.objects.get(pk=store.pk).last_used_at is not None


def test_a_token_of_one_store_never_authenticates_as_another(store, client):
    from tests.factories import StoreFactory

    other = StoreFactory()
    response = client.get("/events", HTTP_AUTHORIZATION=f"Bearer {other.token}x")
    assert response.status_code == 401


def test_last_used_at_is_written_at_most_once_a_minute(store, client):
    from events.authentication import LAST_USED_RESOLUTION_SECONDS

    assert _push(client, store.token).status_code == 202
    first = Store.objects.get(pk=store.pk).last_used_at
    assert _push(client, store.token).status_code == 202
    assert Store.objects.get(pk=store.pk).last_used_at == first
    # Once the resolution has passed, the next request writes it again (the store is read again
    # once authentication's cache of it has expired: cleared here).
    long_ago = timezone.now() - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS + 1)
    Store.objects.filter(pk=store.pk).update(last_used_at=long_ago)
    store_cache_clear()
    assert _push(client, store.token).status_code == 202
    assert Store.objects.get(pk=store.pk).last_used_at > first


def test_token_comparison_is_constant_time(store, monkeypatch):
    """Both the current and the previous hash go through hmac.compare_digest (timing tells a
    guesser nothing); the real function still decides."""
    import hmac

    from events import models as event_models

    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def recording(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(event_models.hmac, "compare_digest", recording)
    old = store.token
    store_token_rotate(store=store, grace_seconds=3600)
    stored = Store.objects.get(pk=store.pk)
    assert stored.token_matches(old)
    assert {a for a, _ in compared} == {stored.token_hash, stored.previous_token_hash}
