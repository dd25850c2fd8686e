from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from events.models import Store
from tests.factories import StoreFactory


def pytest_configure(config: pytest.Config) -> None:
    # The tests' subscribers listen on 127.0.0.1, which the SSRF guard refuses by default. Allow it
    # here and in the environment that worker processes started by the tests inherit; the guard's
    # own tests turn it back off.
    from django.conf import settings

    os.environ["HUB_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = True


@pytest.fixture
def store(db) -> Store:
    return StoreFactory()


@pytest.fixture
def client_for() -> Callable[[Store], APIClient]:
    def make(store: Store) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {store.token}")
        return client

    return make


@pytest.fixture
def api(store, client_for) -> APIClient:
    """An API client authenticated as `store`."""
    return client_for(store)
