import pytest
from django.conf import settings as django_settings
from django.core.cache import caches

from tests.factories import StoreFactory

pytestmark = pytest.mark.django_db

ENVELOPE = {"message": "order:new", "payload": {"order": {"number": "R1"}}}


@pytest.fixture
def tight_rates(settings):
    settings.HUB_RATE_LIMITS = {"store_write": "3/minute", "store_read": "2/minute"}


def test_pushes_over_the_store_rate_get_429_with_retry_after(tight_rates, client_for):
    client = client_for(StoreFactory())
    for _ in range(3):
        assert client.post("/events", ENVELOPE, format="json").status_code == 202
    response = client.post("/events", ENVELOPE, format="json")
    assert response.status_code == 429
    body = response.json()
    assert body["error"] == "rate_limited"
    assert body["detail"]
    assert 1 <= int(response["Retry-After"]) <= 61


def test_the_limit_is_per_store(tight_rates, client_for):
    busy, quiet = client_for(StoreFactory()), client_for(StoreFactory())
    for _ in range(3):
        busy.post("/events", ENVELOPE, format="json")
    assert busy.post("/events", ENVELOPE, format="json").status_code == 429
    assert quiet.post("/events", ENVELOPE, format="json").status_code == 202


def test_reads_have_their_own_bucket(tight_rates, client_for):
    client = client_for(StoreFactory())
    for _ in range(3):
        client.post("/events", ENVELOPE, format="json")
    assert client.get("/events").status_code == 200
    assert client.get("/events").status_code == 200
    assert client.get("/events").status_code == 429


def test_a_throttled_batch_stores_nothing(tight_rates, client_for, store):
    client = client_for(store)
    for _ in range(3):
        client.post("/events", ENVELOPE, format="json")
    response = client.post("/events/batch", [ENVELOPE, ENVELOPE], format="json")
    assert response.status_code == 429
    assert store.events.count() == 3


def test_unauthenticated_requests_get_401_not_a_rate_count(tight_rates, client):
    response = client.post("/events", ENVELOPE, content_type="application/json")
    assert response.status_code == 401


def test_counts_live_in_the_shared_cache(tight_rates, client_for, store):
    expected = "RedisCache" if django_settings.REDIS_URL else "FileBasedCache"
    assert type(caches["default"]).__name__ == expected
    client_for(store).post("/events", ENVELOPE, format="json")
    ident = f"{store.pk}-{int(store.created_at.timestamp() * 1_000_000)}"
    history = caches["default"].get(f"throttle_store_write_{ident}")
    assert isinstance(history, list) and len(history) == 1
