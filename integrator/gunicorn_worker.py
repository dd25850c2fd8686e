"""gunicorn's threaded worker, receiving each request in its event loop before a thread is given to it.

Stock gthread gives a connection to a thread at its first byte, so a few dozen clients sending a
byte a second hold every thread. Here the event loop gathers the head, and the body of a request
that names its sender, and a thread gets it only once complete. A request with no credentials goes
over with its head alone, is refused from its headers, and its body is never read. Every request
must arrive within HUB_REQUEST_READ_SECONDS of wall-clock time, else 408 and a close.

gunicorn still parses the gathered bytes; the framing here only decides when enough has arrived.

The workers also share out new connections: all of them wait on one listening socket, and in a
burst the first to wake would take them all, leaving one process's GIL to serve every client while
the others idle. Each worker publishes how many connections it holds (memory the master shares with
the workers it forks), and one that holds more than another stops listening for a moment, so the
others take the next; one that waited that way for BALANCE_WAIT_MAX_SECONDS accepts anyway.
"""

from __future__ import annotations

import errno
import json
import mmap
import re
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

# Headers that name who sends a request: a store's token (events/authentication.py) or an admin's
# session. A request without any of them is refused before its body matters.
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-hub-access-token", b"x-augury-token", b"cookie"})
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_RECV_BYTES = 256 * 1024


def _reply(status: str, code: str, detail: str) -> bytes:
    """A complete reply in the API's JSON error shape, sent by the event loop itself."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


_TIMEOUT_REPLY = _reply("408 Request Timeout", "request_timeout", "The request did not arrive in time.")
_BUSY_REPLY = _reply(
    "503 Service Unavailable", "server_busy", "The server holds too many unfinished requests; try again."
)
_HEAD_TOO_LARGE_REPLY = _reply(
    "431 Request Header Fields Too Large", "headers_too_large", "The request's headers are too large."
)


class RequestGathering:
    """The bytes of one request received so far, and whether they are enough to hand it over.

    `ready` is set once the head and, when it is to be buffered, the whole body are in `buf`;
    `body_complete` says whether the body is in it (False: a thread will find the body on the
    socket, and the connection is closed after the reply instead of being drained)."""

    def __init__(self, buf: bytes, *, deadline: float, max_body: int, max_head: int) -> None:
        self.buf = bytearray(buf)
        self.deadline = deadline
        self.max_body = max_body
        self.max_head = max_head
        self.ready = False
        self.body_complete = True
        self.head_too_large = False
        self.wants_continue = False
        self.continue_sent = False
        self._head_end: int | None = None
        self._needed: int | None = None  # total bytes for a Content-Length body
        self._chunked = False
        self._scan = 0  # chunked: where the next chunk-size line starts
        self._chunk_bytes = 0
        self.feed(b"")

    def feed(self, data: bytes) -> None:
        self.buf += data
        if self._head_end is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                self.head_too_large = len(self.buf) > self.max_head
                return
            self._head_end = end + 4
            self._frame(bytes(self.buf[: self._head_end]))
            if self.ready:
                return
        if self._needed is not None:
            self.ready = len(self.buf) >= self._needed
        elif self._chunked:
            self._chunks_scan()

    def _frame(self, head: bytes) -> None:
        """What the head says about the body: none, a length, or chunks."""
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        credentials = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                lengths.add(value)
            elif name == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            elif name == b"expect":
                self.wants_continue = value.lower() == b"100-continue"
            elif name in _CREDENTIAL_HEADERS and value:
                credentials = True
        assert self._head_end is not None
        if codings:
            if codings[-1] != b"chunked" or lengths or not credentials:
                self._hand_over_without_body()  # gunicorn refuses the odd ones; the app the anonymous
                return
            self._chunked = True
            self._scan = self._head_end
            return
        if not lengths:
            self.ready = True  # no body
            return
        length = lengths.pop()
        if lengths or not length.isdigit():
            self._hand_over_without_body()  # conflicting or malformed: gunicorn answers 400
            return
        size = int(length)
        if size == 0:
            self.ready = True
        elif size > self.max_body or not credentials:
            # Too large: refused by its declared length. No sender: refused from the headers.
            self._hand_over_without_body()
        else:
            self._needed = self._head_end + size
            self.ready = len(self.buf) >= self._needed

    def _hand_over_without_body(self) -> None:
        self.ready = True
        self.body_complete = False
        self.wants_continue = False

    def _chunks_scan(self) -> None:
        buf = self.buf
        while True:
            line_end = buf.find(b"\r\n", self._scan)
            if line_end < 0:
                if len(buf) - self._scan > self.max_head:
                    self._hand_over_without_body()
                return
            size_text = bytes(buf[self._scan : line_end]).split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size_text):
                self._hand_over_without_body()  # gunicorn answers 400
                return
            size = int(size_text, 16)
            if size == 0:
                # The last chunk, then trailer lines up to an empty one.
                trailers = line_end + 2
                if buf[trailers : trailers + 2] == b"\r\n" or buf.find(b"\r\n\r\n", trailers - 2) >= 0:
                    self.ready = True
                elif len(buf) - trailers > self.max_head:
                    self._hand_over_without_body()
                return
            self._chunk_bytes += size
            if self._chunk_bytes > self.max_body:
                self._hand_over_without_body()  # the app reads up to its cap and answers 413
                return
            after = line_end + 2 + size + 2
            if after > len(buf):
                return
            self._scan = after


class HubConn(TConn):
    """A connection, with the request gathered for it and a close that never waits on the client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gathering: RequestGathering | None = None
        self.gathered = b""
        self.body_complete = True
        self.continue_sent = False

    def close(self, graceful: bool = False) -> None:
        # gthread's graceful close lingers up to 2 s reading what the client still sends, and it
        # runs in the event loop: a silent client would stall every connection of the worker.
        # Half-close, drop what is already here, close; the reply went out before.
        if not graceful:
            super().close()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.setblocking(False)
            for _ in range(16):
                if not self.sock.recv(65536):
                    break
        except OSError:
            pass
        super().close()


# Connections a worker may hold beyond the fewest any other holds before it leaves new ones to them;
# how long it stops listening each time; and how long new connections may wait so before it takes
# them anyway (the others may be stuck).
BALANCE_SLACK = 1
BALANCE_PAUSE_SECONDS = 0.002
BALANCE_WAIT_MAX_SECONDS = 0.02
BALANCE_SLOTS = 64

# Each live worker's open connections by slot, -1 for a free slot: an anonymous shared mapping made
# at import, which happens in gunicorn's master (it loads the worker class before forking), so
# every worker it forks writes and reads the same memory.
_connections = memoryview(mmap.mmap(-1, 4 * BALANCE_SLOTS)).cast("i")
_connections[:] = memoryview(bytes(b"\xff" * 4 * BALANCE_SLOTS)).cast("i")
_slots_taken: set[int] = set()  # in the master only


def _slot_take() -> int | None:
    """In the master, as a worker is made: a slot no live worker has (None past BALANCE_SLOTS)."""
    for slot in range(BALANCE_SLOTS):
        if slot not in _slots_taken:
            _slots_taken.add(slot)
            _connections[slot] = 0
            return slot
    return None


def worker_exited(worker: Any) -> None:
    """gunicorn's child_exit hook, in the master: the dead worker's slot is free, and counts for no one."""
    slot = getattr(worker, "balance_slot", None)
    if slot is not None:
        _connections[slot] = -1
        _slots_taken.discard(slot)


# What a worker may hold of unfinished requests, in largest bodies: the memory that clients
# sending slowly can take, however many connect. Past it, a request that needs more is refused (503).
BUFFER_BUDGET_BODIES = 64


class BufferingThreadWorker(ThreadWorker):
    """gthread, with every request received by the event loop first, and new connections shared
    out between the workers (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # in the master, before the fork
        self.balance_slot = _slot_take()
        self.accept_paused_until = 0.0
        self.deferring_since: float | None = None
        self.deferring_last = 0.0

    def init_process(self) -> None:
        self.gatherings: dict[HubConn, None] = {}  # in deadline order: each gets the same allowance
        self.gathered_bytes = 0  # held by unfinished requests, against BUFFER_BUDGET_BODIES bodies
        super().init_process()

    def run(self) -> None:
        # The application is loaded by now, and with it the settings.
        from django.conf import settings

        self.read_seconds = float(settings.HUB_REQUEST_READ_SECONDS)
        self.max_body = int(settings.HUB_MAX_BODY_BYTES)
        self.budget = BUFFER_BUDGET_BODIES * self.max_body
        cfg = self.cfg
        # As large as gunicorn itself accepts (a request line, then its fields); larger is refused.
        self.max_head = cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 4
        super().run()

    def accept(self, listener: socket.socket) -> None:
        if self._leaves_to_others():
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):  # another worker took it
                raise
            return
        self.nr_conns += 1
        self._publish()
        self.enqueue_req(HubConn(self.cfg, client, address, listener.getsockname()))

    def _publish(self) -> None:
        if self.balance_slot is not None:
            # A stopping worker accepts no more: it counts for no one (-1) while it finishes.
            _connections[self.balance_slot] = self.nr_conns if self.alive else -1

    def _leaves_to_others(self) -> bool:
        """Whether to leave the waiting connection to a worker that holds fewer, pausing the listener."""
        if self.balance_slot is None:
            return False
        others = [n for slot, n in enumerate(_connections.tolist()) if n >= 0 and slot != self.balance_slot]
        if not others or self.nr_conns <= min(others) + BALANCE_SLACK:
            self.deferring_since = None
            return False
        now = time.monotonic()
        if self.deferring_since is None or now - self.deferring_last > BALANCE_WAIT_MAX_SECONDS:
            self.deferring_since = now  # a new wait; one that went quiet is over
        self.deferring_last = now
        if now - self.deferring_since >= BALANCE_WAIT_MAX_SECONDS:
            return False  # the others have not taken them: this burst is ours
        self.accept_paused_until = now + BALANCE_PAUSE_SECONDS
        self.set_accept_enabled(False)
        return True

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread's loop enables accepting again at every turn it may: not while paused.
        if enabled and time.monotonic() < self.accept_paused_until:
            return
        super().set_accept_enabled(enabled)
        if not self.alive:
            self._publish()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        self._publish()  # connections gthread closed since the last turn
        paused = self.accept_paused_until - time.monotonic()
        if paused > 0:
            timeout = min(timeout, paused)  # wake to listen again
        super().wait_for_and_dispatch_events(timeout)

    def _gathers(self, conn: TConn) -> bool:
        return (
            isinstance(conn, HubConn)
            and not conn.is_http2
            and not self.cfg.is_ssl
            and not negotiation.prior_knowledge_allowed(self.cfg, conn.client)
        )

    def enqueue_req(self, conn: TConn) -> None:
        """Runs in the event loop for every request of a connection: gather it, then hand it over."""
        if not self._gathers(conn):
            super().enqueue_req(conn)
            return
        assert isinstance(conn, HubConn)
        # Bytes gunicorn read ahead, past the previous request, belong to this one.
        ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.gathering = RequestGathering(
            ahead,
            deadline=time.monotonic() + self.read_seconds,
            max_body=self.max_body,
            max_head=self.max_head,
        )
        self.gathered_bytes += len(ahead)
        conn.sock.setblocking(False)
        self._gather(conn)

    def _gather(self, conn: HubConn) -> None:
        gathering = conn.gathering
        assert gathering is not None
        closed = False
        while not gathering.ready and not gathering.head_too_large:
            try:
                data = conn.sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._gathering_end(conn)
                self.nr_conns -= 1
                conn.close()
                return
            if not data:
                closed = True
                break
            gathering.feed(data)
            self.gathered_bytes += len(data)
            if self.gathered_bytes > self.budget and not gathering.ready:
                self._refuse(conn, _BUSY_REPLY)
                return
        if gathering.head_too_large:
            self._refuse(conn, _HEAD_TOO_LARGE_REPLY)
            return
        if gathering.ready:
            self._hand_over(conn)
            return
        if closed:
            # The client left before its request was complete: there is no one to answer.
            self._gathering_end(conn)
            self.nr_conns -= 1
            conn.close()
            return
        if gathering.wants_continue and not gathering.continue_sent:
            # The client waits for this before it sends the body (gunicorn would send it only later).
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                gathering.continue_sent = True
            except OSError:
                pass
        if conn not in self.gatherings:
            self.gatherings[conn] = None
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: HubConn, _sock: socket.socket) -> None:
        self._gather(conn)

    def _gathering_end(self, conn: HubConn) -> None:
        if conn.gathering is not None:
            self.gathered_bytes -= len(conn.gathering.buf)
        if self.gatherings.pop(conn, False) is None:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
        conn.gathering = None

    def _hand_over(self, conn: HubConn) -> None:
        gathering = conn.gathering
        assert gathering is not None
        self._gathering_end(conn)
        conn.gathered = bytes(gathering.buf)
        conn.body_complete = gathering.body_complete
        conn.continue_sent = gathering.continue_sent
        conn.sock.setblocking(True)
        conn.data_ready = True
        super().enqueue_req(conn)

    def _refuse(self, conn: HubConn, reply: bytes) -> None:
        self._gathering_end(conn)
        try:
            conn.sock.send(reply)
        except OSError:
            pass
        self.nr_conns -= 1
        conn.close(graceful=True)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.gatherings:
            conn = next(iter(self.gatherings))
            gathering = conn.gathering
            if gathering is None or (gathering.deadline > now and self.alive):
                break
            # A stopping worker does not wait out its deadlines: the request was not started yet.
            reply = _TIMEOUT_REPLY if self.alive else _BUSY_REPLY
            # A connection that never started a request is closed quietly.
            self._refuse(conn, reply if gathering.buf else b"")

    def handle(self, conn: TConn) -> Any:
        """In a thread: the request is in memory; gunicorn parses it from there."""
        if isinstance(conn, HubConn) and conn.gathered:
            conn.init()
            conn.parser.unreader.unread(conn.gathered)
            conn.gathered = b""
        return super().handle(conn)

    def handle_request(self, req: Any, conn: TConn) -> bool:
        if isinstance(conn, HubConn):
            if not conn.body_complete:
                # The body is still on the socket, maybe arriving a byte a second: answer and close,
                # never drain it in this thread.
                req.must_close = True
            if conn.continue_sent:
                req._expected_100_continue = False
        return super().handle_request(req, conn)
