"""The bench's subscriber answers `GET /wait?count=N` once N requests have arrived, with what /stats
would say then, or at its timeout with what it has: the bench waits on it instead of polling."""

from __future__ import annotations

import asyncio
import json

from bench import load
from bench.subscriber import SubscriberProtocol, SubscriberState


async def _delivery(port: int, webhook_id: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /d HTTP/1.1\r\nHost: x\r\nwebhook-id: {webhook_id}\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    await reader.readuntil(b"{}")
    writer.close()


async def _with_subscriber(body) -> None:
    state = SubscriberState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SubscriberProtocol(state), "127.0.0.1", 0)
    try:
        await body(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def test_a_wait_is_answered_once_its_count_has_arrived_with_every_arrival() -> None:
    async def body(port: int) -> None:
        waiting = asyncio.ensure_future(load.get("127.0.0.1", port, "/wait?count=2"))
        await _delivery(port, "a")
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await _delivery(port, "b")
        stats = json.loads((await asyncio.wait_for(waiting, 10)).body)
        assert stats["count"] == 2
        assert set(stats["received"]) == {"a|/d", "b|/d"}
        # Already there: answered at once.
        again = json.loads((await asyncio.wait_for(load.get("127.0.0.1", port, "/wait?count=1"), 10)).body)
        assert again["count"] == 2

    asyncio.run(_with_subscriber(body))


def test_a_wait_past_its_timeout_is_answered_with_what_arrived() -> None:
    async def body(port: int) -> None:
        await _delivery(port, "a")
        stats = json.loads((await asyncio.wait_for(load.get("127.0.0.1", port, "/wait?count=5&timeout=0.1"), 10)).body)
        assert stats["count"] == 1

    asyncio.run(_with_subscriber(body))
