"""The Redis broker's transport (integrator/broker_redis.py) keeps each channel's redis client
instead of building one per publish, receipt and acknowledgement, and still reconnects after Redis
drops it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from integrator.broker_redis import Channel, Transport

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")


@pytest.fixture
def redis_url() -> Iterator[str]:
    from tests.live import RedisServer

    redis = RedisServer().start()
    try:
        yield redis.url
    finally:
        redis.kill()


@pytest.fixture
def clients_built(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every redis client a channel builds (kombu's own _create_client, counted)."""
    built: list[Any] = []
    create = Channel._create_client

    def counted(self: Channel, asynchronous: bool = False) -> Any:
        client = create(self, asynchronous=asynchronous)
        if not asynchronous:
            built.append(client)
        return client

    monkeypatch.setattr(Channel, "_create_client", counted)
    return built


def test_publishes_receipts_and_acks_on_a_channel_share_one_client(redis_url, clients_built):
    with Connection(redis_url, transport=Transport) as conn:
        queue = conn.SimpleQueue("broker-test")
        for n in range(3):
            queue.put({"n": n})
        got = []
        for _ in range(3):
            message = queue.get(timeout=5)  # received as a worker receives: held unacked until acked
            got.append(message.payload["n"])
            message.ack()
        queue.close()
    assert got == [0, 1, 2]
    # kombu's transport builds one for each of the 9 (3 puts, 3 receipts, 3 acks).
    assert len(clients_built) == 1


def test_a_kept_client_whose_connection_redis_dropped_publishes_again(redis_url, clients_built):
    import redis

    with Connection(redis_url, transport=Transport) as conn:
        queue = conn.SimpleQueue("broker-test-drop")
        queue.put({"n": 1})
        [kept] = clients_built
        # Redis ends every client connection (as a restart or a timeout would) but the killer's.
        killer = redis.Redis.from_url(redis_url)
        assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
        queue.put({"n": 2})
        messages = [queue.get(timeout=5) for _ in range(2)]
        for message in messages:
            message.ack()
        assert [m.payload["n"] for m in messages] == [1, 2]
        assert clients_built == [kept]
        queue.close()
        killer.close()
