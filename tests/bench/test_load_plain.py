"""Single ingest's load (bench/load.py): plain keep-alive connections, one per client, never
placed; the sides measured in turns that rotate; slices added up. Against a local asyncio server
that counts the connections it accepts and the requests on each."""

from __future__ import annotations

import asyncio
from collections import Counter

from bench import load


async def _serve() -> tuple[asyncio.Server, Counter[int], list[bytes]]:
    """A keep-alive HTTP/1.1 server: requests per accepted connection, and every request line."""
    per_connection: Counter[int] = Counter()
    lines: list[bytes] = []
    accepted = iter(range(1_000_000))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = next(accepted)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lengths = [
                    int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                ]
                await reader.readexactly(lengths[0] if lengths else 0)
                per_connection[number] += 1
                lines.append(head.split(b"\r\n")[0])
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), per_connection, lines


def test_a_closed_loop_holds_one_plain_connection_per_client_and_never_asks_where_it_landed() -> None:
    async def run() -> tuple[load.LoadResult, Counter[int], list[bytes]]:
        server, per_connection, lines = await _serve()
        async with server:
            result = await load.closed_loop(
                host="127.0.0.1",
                port=server.sockets[0].getsockname()[1],
                make=lambda _: ("/events", b"{}"),
                headers={},
                concurrency=16,
                seconds=0.3,
            )
        return result, per_connection, lines

    result, per_connection, lines = asyncio.run(run())
    assert result.requests > 0 and result.errors == 0 and set(result.statuses) == {202}
    # Sixteen connections, each kept alive for many requests, and no placement probe among them.
    assert len(per_connection) == 16
    assert min(per_connection.values()) > 1
    assert all(line.startswith(b"POST /events ") for line in lines)
    assert not any(load.WORKER_PATH.encode() in line for line in lines)


def test_sides_take_turns_and_no_side_always_comes_first_or_after_the_same_one() -> None:
    names = ["bare", "naive", "peer", "hub", "unrouted"]
    sides = [load.Side(name, 0, lambda n: ("/", b"")) for name in names]
    order = [side.name for side in load.alternation(sides, 10)]

    rounds = [order[i : i + 5] for i in range(0, 50, 5)]
    assert all(sorted(r) == sorted(names) for r in rounds)
    assert {r[0] for r in rounds} == set(names)
    for name in names:
        before = {order[i - 1] for i in range(1, len(order)) if order[i] == name}
        assert len(before) >= 2, (name, before)


def test_slices_add_up() -> None:
    total = load.LoadResult()
    for seconds, statuses in ((1.0, {202: 3}), (2.0, {202: 1, 503: 1})):
        part = load.LoadResult(seconds=seconds)
        for status, count in statuses.items():
            for _ in range(count):
                part.record(load.Response(status, b"", seconds / 10))
        total.merge(part)

    assert (total.requests, total.errors, total.seconds) == (5, 1, 3.0)
    assert total.statuses == {202: 4, 503: 1}
    assert total.rate == 5 / 3.0
    assert sorted(total.latencies) == [0.1, 0.1, 0.1, 0.2, 0.2]
