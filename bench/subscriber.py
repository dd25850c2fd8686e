"""A cheap local subscriber: an asyncio HTTP/1.1 server (keep-alive) that answers every request at
once with 200 `{}` and notes when each webhook-id arrived. A delivery whose body carries
`"hold":true` is answered only after HOLD_SECONDS the first time it comes (its in-flight slot stays
taken meanwhile, for the stall phase); again, at once.

`GET /stats` returns {"count": n, "received": {webhook_id: unix_time, ...}} and `POST /reset`
forgets them, so the benchmark can time deliveries and end-to-end latency without a database.
`GET /wait?count=N` answers as /stats once N requests have arrived (or after `timeout` seconds,
60 unless given): the benchmark waits on one request instead of polling, which would take CPU
from what it measures.
Run it as `python -m bench.subscriber --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import parse_qs, urlsplit

REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
HOLD_SECONDS = 120.0


class SubscriberState:
    def __init__(self) -> None:
        self.count = 0
        self.received: dict[str, float] = {}
        self.held: set[bytes] = set()
        self.waiters: list[tuple[int, asyncio.Transport]] = []

    def stats_reply(self) -> bytes:
        body = json.dumps({"count": self.count, "received": self.received}).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )

    def wait(self, transport: asyncio.Transport, count: int, timeout: float) -> None:
        if self.count >= count:
            transport.write(self.stats_reply())
            return
        waiter = (count, transport)
        self.waiters.append(waiter)
        asyncio.get_running_loop().call_later(timeout, self.waited, waiter)

    def waited(self, waiter: tuple[int, asyncio.Transport]) -> None:
        if waiter in self.waiters:
            self._answer(waiter)

    def _answer(self, waiter: tuple[int, asyncio.Transport]) -> None:
        self.waiters.remove(waiter)
        if not waiter[1].is_closing():
            waiter[1].write(self.stats_reply())

    def note(self, headers: dict[bytes, bytes]) -> None:
        self.count += 1
        webhook_id = headers.get(b"webhook-id")
        if webhook_id is not None:
            # The first arrival counts; a repeat (at-least-once) is not a new delivery.
            self.received.setdefault(webhook_id.decode() + "|" + headers.get(b":path", b"").decode(), time.time())
        if self.waiters:
            # Answered after this request's own reply is written: its time is already noted.
            asyncio.get_running_loop().call_soon(self.wake)

    def wake(self) -> None:
        for waiter in [w for w in self.waiters if w[0] <= self.count]:
            self._answer(waiter)


class SubscriberProtocol(asyncio.Protocol):
    def __init__(self, state: SubscriberState) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            headers: dict[bytes, bytes] = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path = head[0].split(b" ")[:2]
            assert self.transport is not None
            if path == b"/stats":
                self.transport.write(self.state.stats_reply())
            elif path.startswith(b"/wait?"):
                query = parse_qs(urlsplit(path.decode()).query)
                self.state.wait(self.transport, int(query["count"][0]), float(query.get("timeout", ["60"])[0]))
            elif path == b"/reset":
                self.state.count = 0
                self.state.received.clear()
                self.state.held.clear()
                self.state.waiters.clear()
                self.transport.write(REPLY)
            else:
                headers[b":path"] = path
                self.state.note(headers)
                webhook_id = headers.get(b"webhook-id", b"")
                if b'"hold":true' in body and webhook_id not in self.state.held:
                    self.state.held.add(webhook_id)
                    asyncio.get_running_loop().call_later(HOLD_SECONDS, self.reply_late)
                else:
                    self.transport.write(REPLY)

    def reply_late(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(REPLY)


async def subscriber_serve(port: int) -> None:
    state = SubscriberState()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SubscriberProtocol(state), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        asyncio.run(subscriber_serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
