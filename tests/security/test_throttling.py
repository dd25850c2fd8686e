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
    cache = caches["default"]
    assert type(cache).__name__ == expected
    client_for(store).post("/events", ENVELOPE, format="json")
    ident = f"{store.pk}-{int(store.created_at.timestamp() * 1_000_000)}"
    if expected == "RedisCache":
        # One sorted-set entry per request, in Redis where every web process counts.
        key = cache.make_and_validate_key(f"throttle_log_store_write_{ident}")
        assert cache._cache.get_client(key).zcard(key) == 1
    else:
        history = cache.get(f"throttle_store_write_{ident}")
        assert isinstance(history, list) and len(history) == 1


def test_a_request_refused_is_not_counted_and_the_window_slides(settings, client_for, store):
    # 2 per second: the third push in the same second is refused and does not extend the wait;
    # once the first two are a second old, pushes go through again.
    import time

    settings.HUB_RATE_LIMITS = {"store_write": "2/second", "store_read": "2/second"}
    client = client_for(store)
    started = time.monotonic()
    assert [client.post("/events", ENVELOPE, format="json").status_code for _ in range(2)] == [202, 202]
    refused = client.post("/events", ENVELOPE, format="json")
    if time.monotonic() - started < 1:  # on a machine too slow for that, the window has moved on
        assert refused.status_code == 429
        assert 1 <= int(refused["Retry-After"]) <= 2
    time.sleep(1.05)
    assert client.post("/events", ENVELOPE, format="json").status_code == 202
