"""The second exchange on a kept-alive connection (routing.transport.kept, http.client without
urlopen) against requests' whole path on the same kind of connection: the same result for every way
the endpoint answers or fails; no database."""

import gzip
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.transport import netguard
from routing.transport.exchange import request_send, session_new
from routing.transport.kept import kept_exchange
from tests.live import https_endpoint
from tests.routing.test_transport import build
from tests.routing.test_transport_plain import outcome, request_read, whole_path_session

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
ZIPPED = gzip.compress(b'{"zipped": true}')

# A reply whose body comes a byte every 0.2 s: only the wall-clock deadline ends it.
DRIP = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"

# What the endpoint does with the second request on a connection; None: hang up without a word,
# b"": say nothing until the client gives up.
SECOND = {
    "json": OK,
    "hang-up": None,
    "silent": b"",
    "drip": DRIP,
    "short-body": b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"a"',
    "garbage-status": b"NOT HTTP AT ALL\r\n\r\n",
    "empty-302": b"HTTP/1.1 302 Found\r\nLocation: /else\r\nContent-Length: 0\r\n\r\n",
    "repeated-headers": b"HTTP/1.1 503 No\r\nRetry-After: 1\r\nRetry-After: 2\r\nContent-Length: 1\r\n\r\nx",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "chunked-broken": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
    "gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(ZIPPED), ZIPPED),
    "gzip-broken": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nnotgz",
    "too-large": b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
    "until-close": b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"b": 1}',
}

# Replies the endpoint sends and then hangs up on, mid-body.
HANGS_UP_AFTER = {"short-body", "chunked-broken"}


def _drip(conn: socket.socket) -> None:
    try:
        for _ in range(100):
            time.sleep(0.2)
            conn.sendall(b"x")
    except OSError:
        pass  # the client hung up at its deadline


@pytest.fixture
def second_fails() -> Iterator[str]:
    """Answers a connection's second request as SECOND[path] says, the others with `{}`."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        # The path is the second request's: the test names it before each request (url below).
        with conn:
            served = 0
            while request_read(conn):
                reply = SECOND[handle.path] if served == 1 else OK  # type: ignore[attr-defined]
                if reply is None:
                    return
                if not reply:
                    conn.recv(1)  # no answer: wait for the client to give up
                    return
                conn.sendall(reply)
                if reply is DRIP:
                    _drip(conn)
                    return
                if b"Connection: close" in reply or (served == 1 and handle.path in HANGS_UP_AFTER):  # type: ignore[attr-defined]
                    return
                served += 1

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    handle.path = ""  # type: ignore[attr-defined]

    def url(case: str) -> str:
        handle.path = case  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{server.getsockname()[1]}/{case}"

    yield url  # type: ignore[misc]
    stop.set()
    thread.join(timeout=2)
    server.close()


@pytest.mark.parametrize("case", sorted(SECOND))
def test_a_kept_connection_answers_alike_on_both_paths(second_fails, case, monkeypatch):
    kept_calls = []
    monkeypatch.setattr(netguard, "kept_exchange", lambda *a, **k: kept_calls.append(1) or kept_exchange(*a, **k))
    results = []
    for session in (whole_path_session(), session_new()):
        url = second_fails(case)
        first = request_send(build(url), timeout=2, session=session)
        assert first.succeeded, first.error
        results.append(request_send(build(url), timeout=1, session=session, read_max_bytes=1000))
    whole, kept = results
    assert kept_calls == [1], "the second exchange of the short path went through urlopen"
    assert outcome(kept) == outcome(whole)
    if case == "drip":
        # Each byte came well within the socket's timeout: the deadline cut the exchange.
        assert kept.error.startswith("timed out: no complete reply within 1s"), kept.error
    assert (kept.reply, kept.response_headers, kept.retry_after) == (
        whole.reply,
        whole.response_headers,
        whole.retry_after,
    )
    # The connection is left fit for the next exchange either way.
    assert request_send(build(second_fails("json")), timeout=2, session=session).succeeded


@pytest.fixture
def tls_endpoint(tmp_path) -> Iterator[tuple[str, str]]:
    """An HTTPS endpoint on 127.0.0.1 with keep-alive, its self-signed certificate in a file."""
    with https_endpoint(tmp_path, "127.0.0.1") as (port, cert_file):
        yield f"https://127.0.0.1:{port}/hook", str(cert_file)


def test_tls_is_verified_and_kept_alive_on_the_kept_path(tls_endpoint, monkeypatch):
    url, ca_file = tls_endpoint
    kept_calls = []
    monkeypatch.setattr(netguard, "kept_exchange", lambda *a, **k: kept_calls.append(1) or kept_exchange(*a, **k))
    refused = request_send(build(url), timeout=5, session=session_new())
    assert not refused.succeeded and "CERTIFICATE_VERIFY_FAILED" in refused.error, refused.error
    session = session_new()
    session.verify = ca_file
    results = [request_send(build(url), timeout=5, session=session) for _ in range(3)]
    assert all(r.succeeded for r in results), [r.error for r in results]
    assert kept_calls == [1, 1]
    pools = session.get_adapter(url)._plain_pools.values()
    assert sum(p.num_connections for p in pools) == 1


# Header blocks the email parser reads in every way it has: plain lines, folded ones, names it
# refuses, characters its line splitting breaks on, multipart and message types, a missing end.
HEADER_BLOCKS = [
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n",
    b"A:b\r\nX:  y \t\r\nZ:\r\n\n",
    b"\r\n",
    b"Set-Cookie: a=b\r\nset-cookie: c=d\r\n\r\n",
    b"X-Folded: one\r\n two\r\n\r\n",
    b"X-\xe9: value\r\nContent-Length: 0\r\n\r\n",
    b"X-Latin: caf\xe9\r\n\r\n",
    b"X-Vt: a\x0bb\r\nX-Nel: a\x85b\r\nX-Cr: a\rb\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"From nobody\r\nA: b\r\n\r\n",
    b"No colon here\r\nA: b\r\n\r\n",
    b":empty name\r\n\r\n",
    b"A: b\r\n",
    b"A: b\nB: c\n\n",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_headers_parse_gives_http_clients_message(block):
    import http.client
    import io

    from routing.transport.kept import headers_parse

    ours, theirs = headers_parse(io.BytesIO(block)), http.client.parse_headers(io.BytesIO(block))
    assert type(ours) is type(theirs)
    assert _state(ours) == _state(theirs)
    assert ours.items() == theirs.items()


# Mostly plain characters (the fast way), with those that send a line to the email parser.
_NAMES = st.text(alphabet="aZ-_ \t:\x0b\xe9", max_size=8)
_VALUES = st.one_of(
    st.text(alphabet="a /;=\t \r\x0b\x1c\x85\xe9:", max_size=20),
    st.sampled_from(["multipart/mixed; boundary=b", "Message/RFC822", "application/json", ""]),
)


@given(st.lists(st.tuples(_NAMES, _VALUES).map(lambda p: (p[0].encode("latin-1"), p[1].encode("latin-1"))), max_size=6))
def test_headers_parse_gives_http_clients_message_for_any_lines(lines):
    import http.client
    import io

    from routing.transport.kept import headers_parse

    block = b"".join(name.replace(b"\n", b"") + b":" + value.replace(b"\n", b"") + b"\r\n" for name, value in lines)
    block += b"\r\n"
    assert _state(headers_parse(io.BytesIO(block))) == _state(http.client.parse_headers(io.BytesIO(block)))


def _state(message):
    """A message's attributes, its defects by type and its parts by state (both compare by identity)."""
    payload = message._payload
    if isinstance(payload, list):
        payload = [_state(part) for part in payload]
    return {**vars(message), "defects": [type(d) for d in message.defects], "_payload": payload}
