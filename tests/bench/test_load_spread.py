"""The load generator places its connections evenly over the server's processes (bench/load.py,
connections_spread), against a local server that hands connections to its "processes" in a
scripted order, the first ones all to the same one, as gunicorn's accept often does."""

from __future__ import annotations

import asyncio
from collections import Counter

from bench import load

# The process each new connection lands on: five in a row on "a", then alternating.
PLACEMENT = ["a"] * 5 + ["b", "a"] * 20


async def _serve(placement: list[str]) -> tuple[asyncio.Server, Counter[str]]:
    order = iter(placement)
    served: Counter[str] = Counter()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        process = next(order, "a")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                body = process.encode() if head.startswith(b"GET /bench/worker") else b"{}"
                if not head.startswith(b"GET"):
                    served[process] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), served


def test_connections_are_spread_evenly_over_the_processes() -> None:
    async def run() -> list[str]:
        server, _ = await _serve(PLACEMENT)
        port = server.sockets[0].getsockname()[1]
        async with server:
            conns = await load.connections_spread("127.0.0.1", port, 4, 2)
            places = [(await c.request("GET", load.WORKER_PATH, b"", {})).body.decode() for c in conns]
            for conn in conns:
                await conn.close()
            return places

    assert Counter(asyncio.run(run())) == {"a": 2, "b": 2}


def test_a_closed_loop_with_spread_sends_on_every_process() -> None:
    async def run() -> tuple[load.LoadResult, Counter[str]]:
        server, served = await _serve(PLACEMENT)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await load.closed_loop(
                host="127.0.0.1",
                port=port,
                make=lambda _: ("/events", b"{}"),
                headers={},
                concurrency=4,
                seconds=0.3,
                spread_over=2,
            )
        return result, served

    result, served = asyncio.run(run())
    assert result.requests > 0 and result.errors == 0
    # Both processes got requests; without the spread all four connections land on "a".
    assert served["a"] > 0 and served["b"] > 0


def test_out_of_tries_the_rest_are_fresh_connections() -> None:
    async def run() -> int:
        server, _ = await _serve(["a"] * 50)
        port = server.sockets[0].getsockname()[1]
        async with server:
            conns = await load.connections_spread("127.0.0.1", port, 4, 2, tries=10)
            for conn in conns:
                await conn.close()
            return len(conns)

    assert asyncio.run(run()) == 4
