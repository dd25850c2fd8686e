from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from events.models import Store
from tests.factories import StoreFactory


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
