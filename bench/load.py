"""The load generator: a small asyncio HTTP/1.1 client, lean enough that on a 2-core machine it
takes little of the CPU the hub is being measured with.

It reconnects when the server closes a connection, and times each request with its connect, as a
store sees it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    body: bytes
    seconds: float


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def record(self, response: Response) -> None:
        """Count one answer: its latency, its status, and an error for anything not 2xx."""
        self.requests += 1
        self.latencies.append(response.seconds)
        self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        if response.status >= 300:
            self.errors += 1

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in milliseconds (nearest rank)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[index] * 1000

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0

    def merge(self, part: LoadResult) -> None:
        """Add one slice's result to this total: requests, errors, seconds, latencies, statuses, bodies."""
        self.requests += part.requests
        self.errors += part.errors
        self.seconds += part.seconds
        self.latencies += part.latencies
        self.bodies += part.bodies
        for status, count in part.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        started = time.perf_counter()
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            self.writer.write(head.encode("latin-1") + b"\r\n" + body)
            try:
                return await self._response(started)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server had already dropped: one fresh try.
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _response(self, started: float) -> Response:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
        if b"content-length" in headers:
            body = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = await self._chunked()
        else:
            body = await self.reader.read()
            headers[b"connection"] = b"close"
        if headers.get(b"connection") == b"close":
            await self.close()
        return Response(status, body, time.perf_counter() - started)

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])


RequestFn = Callable[[int], tuple[str, bytes]]
"""Given a running request number, the (path, body) to send."""


@dataclass(frozen=True)
class Side:
    """One of the servers measured side by side in alternating slices: a name for the table, the
    port it listens on, and what to send it."""

    name: str
    port: int
    make: RequestFn


def alternation(sides: list[Side], rounds: int) -> list[Side]:
    """The order of the slices: every side once per round, rounds forwards and backwards in turn,
    each pair starting one side later. So each side comes first after a pause in some rounds, and
    follows a different side in forward and backward rounds (a commit's flush, a checkpoint or a
    garbage collection a side sets off lands on the next)."""
    order: list[Side] = []
    for number in range(rounds):
        turn = sides if number % 2 == 0 else sides[::-1]
        shift = (number // 2) % len(sides)
        order += turn[shift:] + turn[:shift]
    return order


# Answers with the pid of the server process that holds the connection (bench/urls.py).
WORKER_PATH = "/bench/worker"


async def connections_spread(host: str, port: int, count: int, workers: int, *, tries: int = 200) -> list[Connection]:
    """`count` kept-alive connections, as evenly over the server's `workers` processes as `tries`
    connects allow (a connection whose process holds its share is made again). Kept for the labelled
    "placed evenly" row: otherwise the rate is a draw of where the kernel put the connections."""
    share = -(-count // workers)
    held: dict[bytes, int] = {}
    placed: list[Connection] = []
    for _ in range(tries):
        if len(placed) == count:
            break
        conn = Connection(host, port)
        pid = (await conn.request("GET", WORKER_PATH, b"", {})).body
        if held.get(pid, 0) < share:
            held[pid] = held.get(pid, 0) + 1
            placed.append(conn)
        else:
            await conn.close()
    # Out of tries (a server with fewer processes than `workers`): fresh connections make up the rest.
    return placed + [Connection(host, port) for _ in range(count - len(placed))]


async def closed_loop(
    *,
    host: str,
    port: int,
    make: RequestFn,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    warmup: float = 0.0,
    keep_bodies: bool = False,
    spread_over: int = 0,
) -> LoadResult:
    """`concurrency` clients, each sending its next request as soon as the previous one is
    answered, for `seconds` after `warmup` seconds that are not counted. Each client holds one
    plain keep-alive connection to the server's port, opened at its first request and left where
    the server's kernel puts it, as a store's would be. With `spread_over` (the server's process
    count) the connections are placed evenly over its processes first instead (connections_spread).

    A request counts when its answer arrives within the measured seconds, whenever it was sent:
    completions per second of a steady closed loop."""
    result = LoadResult()
    counter = 0
    if spread_over > 1:
        connections = await connections_spread(host, port, concurrency, spread_over)
    else:
        connections = [Connection(host, port) for _ in range(concurrency)]
    loop_started = time.perf_counter()
    measure_from = loop_started + warmup
    stop_at = measure_from + seconds

    async def client(conn: Connection) -> None:
        nonlocal counter
        try:
            while time.perf_counter() < stop_at:
                counter += 1
                path, body = make(counter)
                try:
                    response = await conn.request("POST", path, body, headers)
                except OSError:
                    result.errors += 1
                    await conn.close()
                    continue
                if measure_from <= time.perf_counter() <= stop_at:
                    result.record(response)
                    if keep_bodies:
                        result.bodies.append(response.body)
        finally:
            await conn.close()

    await asyncio.gather(*(client(conn) for conn in connections))
    result.seconds = seconds
    return result


async def open_loop(
    *,
    host: str,
    port: int,
    make: RequestFn,
    headers: dict[str, str],
    rate: float,
    seconds: float,
    on_sent: Callable[[float, Response], None] | None = None,
) -> LoadResult:
    """Requests started at a fixed rate, whatever the answers take (a light, steady load):
    `on_sent(wall_clock_sent, response)` sees every answer."""
    result = LoadResult()
    idle: list[Connection] = []
    tasks = []
    started = time.perf_counter()
    total = int(rate * seconds)

    async def one(number: int) -> None:
        conn = idle.pop() if idle else Connection(host, port)
        path, body = make(number)
        wall = time.time()
        try:
            response = await conn.request("POST", path, body, headers)
        except OSError:
            result.errors += 1
            await conn.close()
            return
        idle.append(conn)
        result.record(response)
        if on_sent is not None:
            on_sent(wall, response)

    for number in range(total):
        delay = started + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(number)))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - started
    for conn in idle:
        await conn.close()
    return result


async def get(host: str, port: int, path: str) -> Response:
    conn = Connection(host, port)
    try:
        started = time.perf_counter()
        assert started
        conn.reader, conn.writer = await asyncio.open_connection(host, port)
        conn.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return await conn._response(started)
    finally:
        await conn.close()
