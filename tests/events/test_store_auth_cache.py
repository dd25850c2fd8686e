"""Authentication remembers a token's store for HUB_STORE_AUTH_CACHE_SECONDS (events.selectors):
what a disabled store's pushes get, in the process that disabled it and in the others."""

import time

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from events import selectors
from events.models import Store
from events.services import store_set_active
from infra import ttl

pytestmark = pytest.mark.django_db

ENVELOPE = {"message": "order:new", "payload": {"order": {"number": "R1"}}}


def test_a_store_disabled_here_is_refused_at_once(store, api):
    assert api.post("/events", ENVELOPE, format="json").status_code == 202
    assert store_set_active(store_id=store.pk, active=False)
    response = api.post("/events", ENVELOPE, format="json")
    assert response.status_code == 403
    assert "disabled" in response.json()["detail"]


def test_a_store_disabled_by_another_process_is_refused_once_the_cache_expires(store, api, monkeypatch):
    assert api.post("/events", ENVELOPE, format="json").status_code == 202
    Store.objects.filter(pk=store.pk).update(is_active=False)  # another web process's admin action
    # Within the cache's lifetime this process still takes the push: the documented staleness.
    assert api.post("/events", ENVELOPE, format="json").status_code == 202
    later = time.monotonic() + django_settings.HUB_STORE_AUTH_CACHE_SECONDS + 0.1
    monkeypatch.setattr(ttl.time, "monotonic", lambda: later)
    assert api.post("/events", ENVELOPE, format="json").status_code == 403


def test_a_store_enabled_again_is_taken_at_once_here(store, api):
    store_set_active(store_id=store.pk, active=False)
    assert api.post("/events", ENVELOPE, format="json").status_code == 403
    store_set_active(store_id=store.pk, active=True)
    assert api.post("/events", ENVELOPE, format="json").status_code == 202


def test_each_request_gets_its_own_copy_of_the_store(store, api):
    assert api.post("/events", ENVELOPE, format="json").status_code == 202
    first = selectors.store_for_token_digest(store.token_hash, now=timezone.now())
    second = selectors.store_for_token_digest(store.token_hash, now=timezone.now())
    assert first == second and first is not second
    first.name = "changed by one request"
    assert selectors.store_for_token_digest(store.token_hash, now=timezone.now()).name == store.name
