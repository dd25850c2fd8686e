"""Stores in the admin: the token is shown once (at creation and rotation), never again."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from events.models import Store, token_hash
from tests.factories import StoreFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/events/store/"


def push(token: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    body = {"message": "order:new", "payload": {"order": {"number": "R1"}}}
    return client.post("/events", body, format="json").status_code


def shown_token(response) -> str:
    [token] = re.findall(r'id="token">(hub_[^<]+)<', response.content.decode())
    return token


def test_create_shows_a_working_token_once(admin_client):
    assert "token" not in admin_client.get(f"{LIST}add/").context["adminform"].form.fields
    response = admin_client.post(f"{LIST}add/", {"name": "shop", "is_active": "on"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = shown_token(response)
    store = Store.objects.get(name="shop")
    assert store.token_hash == token_hash(token)
    assert push(token) == 202
    for url in (LIST, f"{LIST}{store.pk}/change/"):
        text = admin_client.get(url).content.decode()
        assert token not in text and store.token_hash not in text
        assert f"{store.token_hint}••••••••" in text


def test_rotate_token_asks_first_then_shows_the_new_one_and_keeps_the_old_for_the_grace(admin_client):
    store = StoreFactory()
    old = store.token
    confirm = admin_client.get(f"{LIST}{store.pk}/rotate-token/")
    assert confirm.status_code == 200
    assert "keeps working for 24 hours" in confirm.content.decode()
    assert Store.objects.get(pk=store.pk).token_hash == token_hash(old)

    response = admin_client.post(f"{LIST}{store.pk}/rotate-token/")
    new = shown_token(response)
    assert new != old
    assert "The previous token keeps working until" in response.content.decode()
    assert push(new) == 202 and push(old) == 202
    assert "Rotated the token." in admin_client.get(f"{LIST}{store.pk}/history/").content.decode()


def test_change_page_links_to_rotation(admin_client):
    store = StoreFactory()
    assert f"{LIST}{store.pk}/rotate-token/" in admin_client.get(f"{LIST}{store.pk}/change/").content.decode()


def test_disable_refuses_its_pushes_and_enable_lets_them_in(admin_client):
    store = StoreFactory()
    admin_client.post(LIST, {"action": "disable_selected", "_selected_action": [store.pk]})
    assert not Store.objects.get(pk=store.pk).is_active
    assert push(store.token) == 403
    assert "Disabled." in admin_client.get(f"{LIST}{store.pk}/history/").content.decode()
    admin_client.post(LIST, {"action": "enable_selected", "_selected_action": [store.pk]})
    assert push(store.token) == 202


def test_rotation_needs_the_change_permission(client, store):
    from django.contrib.auth.models import Permission, User

    viewer = User.objects.create_user("viewer", password="pw-long-enough-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_store"))
    client.force_login(viewer)
    assert client.post(f"{LIST}{store.pk}/rotate-token/").status_code == 403
    assert Store.objects.get(pk=store.pk).token_hash == token_hash(store.token)
