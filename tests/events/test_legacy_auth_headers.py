"""Older store extensions authenticate with X-Hub-Store + X-Hub-Access-Token or X-Augury-Token."""

import pytest
from rest_framework.test import APIClient

from events.models import Event

pytestmark = pytest.mark.django_db

ORDER = {"message": "order:new", "payload": {"order": {"number": "R1"}}}


def test_x_hub_store_and_access_token_authenticate(store):
    client = APIClient()
    client.credentials(HTTP_X_HUB_STORE=store.name, HTTP_X_HUB_ACCESS_TOKEN=store.token)
    assert client.post("/events", ORDER, format="json").status_code == 202
    assert Event.objects.get().store == store


def test_x_hub_store_may_carry_the_store_id(store):
    client = APIClient()
    client.credentials(HTTP_X_HUB_STORE=str(store.pk), HTTP_X_HUB_ACCESS_TOKEN=store.token)
    assert client.post("/events", ORDER, format="json").status_code == 202


def test_x_augury_token_authenticates(store):
    client = APIClient()
    client.credentials(HTTP_X_AUGURY_TOKEN=store.token)
    assert client.post("/events", ORDER, format="json").status_code == 202
    assert client.get("/events").status_code == 200
    assert Event.objects.get().store == store
