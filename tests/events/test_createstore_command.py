"""`manage.py createstore NAME` prints the token once and stores only its hash."""

import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from events.models import Store

pytestmark = pytest.mark.django_db


def createstore(name: str) -> str:
    out = StringIO()
    call_command("createstore", name, stdout=out)
    return out.getvalue()


def test_createstore_prints_a_token_that_authenticates():
    output = createstore("acme")
    token = output.strip().splitlines()[-1]
    assert token.startswith("hub_") and len(token) > 40
    assert output.count(token) == 1

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post("/events", {"message": "order:new", "payload": {}}, format="json")
    assert response.status_code == 202


def test_createstore_stores_only_the_hash():
    token = createstore("acme").strip().splitlines()[-1]
    store = Store.objects.get(name="acme")
    assert store.token_hash == hashlib.sha256(token.encode()).hexdigest()
    stored = [str(v) for v in Store.objects.filter(pk=store.pk).values().get().values()]
    assert not any(token in value for value in stored)
    assert token.startswith(store.token_hint) and len(store.token_hint) < len(token) // 3


def test_createstore_refuses_an_existing_name():
    createstore("acme")
    with pytest.raises(CommandError):
        createstore("acme")
    assert Store.objects.filter(name="acme").count() == 1


def test_each_store_gets_its_own_token():
    a = createstore("a").strip().splitlines()[-1]
    b = createstore("b").strip().splitlines()[-1]
    assert a != b
