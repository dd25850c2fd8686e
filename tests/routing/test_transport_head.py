"""A kept connection's request head written in one string (routing.transport.head) against
http.client's putrequest, putheader and endheaders (kept_exchange with head_write turned off, which
makes those calls): the same bytes, the same refusals, the same connection left; no database."""

import http.client
import socket
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3.util.retry import Retry

from routing.transport import head, kept, netguard
from routing.transport.exchange import request_send, session_new
from routing.transport.kept import kept_exchange
from tests.routing.test_transport import build
from tests.routing.test_transport_plain import whole_path_session

REPLY = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
BODY = b'{"message":"order:new"}'
UNREAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

# What _response_get hands kept_exchange for a delivery: the session's defaults, then the request's.
DELIVERY = {
    "User-Agent": "integrator-hub/1",
    "Accept-Encoding": "gzip, deflate",
    "Accept": "application/json",
    "Connection": "keep-alive",
    "Content-Type": "application/json",
    "X-Hub-Store": "Boutique%20M%C3%BCller",
    "X-Hub-Token": "tok-123",
    "X-Augury-Token": "tok-123",
    "webhook-id": "01930000-0000-7000-8000-000000000001",
    "webhook-timestamp": "1764720000",
    "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= v1,Qm9ndXM=",
    "Content-Length": str(len(BODY)),
}

# Connections: (scheme, host, port, tunnel).
CONNECTIONS = [
    ("http", "127.0.0.1", 8080, None),
    ("http", "hooks.example.com", 80, None),
    ("https", "hooks.example.com", 443, None),
    ("https", "hooks.example.com", 8443, None),
    ("http", "hooks.example.com.", 80, None),
    ("http", "::1", 8080, None),
    ("https", "[fe80::1%25eth0]", 443, None),
    ("http", "[::1]", 80, None),
    ("http", "2001:db8::7", 80, None),
    ("https", "proxy.example", 3128, ("hooks.example.com", 8443)),
]

# Header sets and targets head_write writes itself (all but the first two lines of DELIVERY vary).
WRITTEN = [
    ("POST", "/hook", DELIVERY),
    ("PUT", "/a/b?store=1&x=%20y", DELIVERY),
    ("post", "/hook", DELIVERY),
    ("POST", "/hook", {**DELIVERY, "X-Hub-Store": "Boutique Müller", "X-Note": "café \xa0 ÿ"}),
    ("POST", "/hook", {**DELIVERY, "X-Empty": "", "X-Tab": "a\tb", "X-Del": "a\x7fb", "X-Folded": "a\r\n b"}),
    ("POST", "/hook", {**DELIVERY, "X\tName": "v", "x-lower": "v", "X-Custom-Subscription": "a b; c=d, e"}),
    ("POST", "/hook", {**DELIVERY, "Host": "override.example:9000"}),
    ("POST", "/hook", {"Content-Length": "2", "X-Only": "1"}),
    ("POST", "/hook", {"content-length": "2", "HOST": "h", "ACCEPT-ENCODING": "br", "user-agent": "ua"}),
]

# What head_write leaves to http.client: what it refuses, and what it writes in a way of its own.
LEFT = [
    ("PO ST", "/hook", DELIVERY),
    ("POST\r\n", "/hook", DELIVERY),
    ("GET\x00", "/hook", DELIVERY),
    ("POST", "/a b", DELIVERY),
    ("POST", "/a\x01", DELIVERY),
    ("POST", "/a\x7f", DELIVERY),
    ("POST", "/caf\xe9", DELIVERY),
    ("POST", "", DELIVERY),
    ("POST", "http://elsewhere.example:81/x", DELIVERY),
    ("POST", "/hook", {**DELIVERY, "Bad:Name": "v"}),
    ("POST", "/hook", {**DELIVERY, " Lead": "v"}),
    ("POST", "/hook", {**DELIVERY, "": "v"}),
    ("POST", "/hook", {**DELIVERY, "X\r\nInjected": "v"}),
    ("POST", "/hook", {**DELIVERY, "Nämé": "v"}),
    ("POST", "/hook", {**DELIVERY, "X-Split": "a\r\nb"}),
    ("POST", "/hook", {**DELIVERY, "X-Split": "a\nb"}),
    ("POST", "/hook", {**DELIVERY, "X-Split": "a\rb"}),
    ("POST", "/hook", {**DELIVERY, "X-Store": "東京店"}),
    ("POST", "/hook", {**DELIVERY, "X-Bytes": b"raw"}),
    ("POST", "/hook", {**DELIVERY, b"X-Bytes-Name": "v"}),
]


def _connect(scheme, host, port, tunnel, replies=REPLY):
    """The delivery session's pool and a connection of its class (from the pool, as kept_exchange
    gets it), on one end of a socket pair whose other end already holds the replies."""
    adapter = session_new().get_adapter(f"{scheme}://example")
    pool = adapter.poolmanager.pool_classes_by_scheme[scheme](host, port)
    conn = pool._get_conn()
    if not host.isascii():
        # urllib3's pool gives its connections the name in IDNA; a connection made otherwise may not have it.
        conn.host = host
    if tunnel is not None:
        conn.set_tunnel(*tunnel)
    ours, theirs = socket.socketpair()
    theirs.sendall(replies)
    conn.sock = ours
    # Open until what was sent is read: the connection's close would otherwise reset the pair.
    _KEPT_OPEN[theirs] = ours.dup()
    return pool, conn, theirs


_KEPT_OPEN: dict[socket.socket, socket.socket] = {}


def _sent(theirs):
    theirs.setblocking(False)
    chunks = []
    while True:
        try:
            chunk = theirs.recv(65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    theirs.close()
    _KEPT_OPEN.pop(theirs).close()
    return b"".join(chunks)


def _send(pool, conn, method, path, headers):
    """kept_exchange's reply or exception, and the connection and pool it leaves."""
    try:
        reply = kept_exchange(
            pool, conn, method=method, path=path, headers=headers, body=BODY, timeout=2, retries=Retry(0, read=False)
        )
        result = ("reply", reply.status_code, reply.headers)
    except Exception as exc:
        reply, result = None, ("raised", type(exc), str(exc))
    left = (conn.sock is None, conn._HTTPConnection__state, getattr(conn, "_method", None), conn._buffer)
    return reply, (result, left, pool.pool.qsize())


@pytest.fixture
def head_calls(monkeypatch):
    """head_write's answers to kept_exchange; with `.off` set, it declines every head (http.client's
    calls write them, as before it)."""
    calls = []
    real = head.head_write

    def head_write(*args):
        calls.append(False if calls_off else real(*args))
        return calls[-1]

    calls_off = False

    class Calls(list):
        @property
        def off(self):
            return calls_off

        @off.setter
        def off(self, value):
            nonlocal calls_off
            calls_off = value

    calls = Calls()
    monkeypatch.setattr(kept, "head_write", head_write)
    return calls


def _exchange(calls, connection, method, path, headers, *, written_by_head):
    """What kept_exchange sends and gives (or raises) on a fresh connection, and what it leaves."""
    calls.off = not written_by_head
    pool, conn, theirs = _connect(*connection)
    reply, outcome = _send(pool, conn, method, path, headers)
    if reply is not None:
        reply.close()
    return (outcome, _sent(theirs))


@pytest.mark.parametrize("connection", CONNECTIONS)
@pytest.mark.parametrize(("method", "path", "headers"), WRITTEN)
def test_the_head_is_http_clients_byte_for_byte(head_calls, connection, method, path, headers):
    ours = _exchange(head_calls, connection, method, path, headers, written_by_head=True)
    assert head_calls == [True], "head_write left this head to http.client"
    theirs = _exchange(head_calls, connection, method, path, headers, written_by_head=False)
    assert ours == theirs
    assert ours[0][0][0] == "reply", ours
    assert ours[1].endswith(b"\r\n\r\n" + BODY)


@pytest.mark.parametrize("connection", CONNECTIONS[:1] + CONNECTIONS[-2:])
@pytest.mark.parametrize(("method", "path", "headers"), LEFT)
def test_what_http_client_refuses_is_refused_alike(head_calls, connection, method, path, headers):
    ours = _exchange(head_calls, connection, method, path, headers, written_by_head=True)
    assert head_calls == [False]
    assert ours == _exchange(head_calls, connection, method, path, headers, written_by_head=False)


def test_a_host_only_idna_can_spell_is_left_to_http_client(head_calls):
    connection = ("http", "bücher.example", 80, None)
    ours = _exchange(head_calls, connection, "POST", "/hook", DELIVERY, written_by_head=True)
    assert head_calls == [False]
    assert ours == _exchange(head_calls, connection, "POST", "/hook", DELIVERY, written_by_head=False)
    assert b"\r\nHost: xn--bcher-kva.example\r\n" in ours[1]


def test_nothing_is_written_or_changed_when_head_write_declines():
    pool, conn, theirs = _connect(*CONNECTIONS[0])
    before = dict(vars(conn))
    assert not head.head_write(conn, "POST", "/a b", DELIVERY, {k.lower() for k in DELIVERY})
    assert vars(conn) == before
    assert _sent(theirs) == b""


def test_a_connection_not_idle_is_left_to_http_client():
    pool, conn, theirs = _connect(*CONNECTIONS[0])
    conn.putrequest("POST", "/first")
    assert not head.head_write(conn, "POST", "/hook", DELIVERY, {k.lower() for k in DELIVERY})
    with pytest.raises(http.client.CannotSendRequest):
        conn.putrequest("POST", "/hook")


@pytest.mark.parametrize("read_first", [True, False])
def test_the_next_exchange_on_a_connection_goes_alike(head_calls, read_first):
    """After a reply read to its end (http.client forgets it) and after one left unread (the next
    reply cannot be read before it)."""
    outcomes = []
    for written_by_head in (True, False):
        head_calls.off = not written_by_head
        pool, conn, theirs = _connect(*CONNECTIONS[0], replies=UNREAD)
        first, outcome = _send(pool, conn, "POST", "/1", DELIVERY)
        if read_first:
            assert b"".join(first.iter_content(100)) == b"hello"
            conn = pool._get_conn()
        theirs.sendall(REPLY)
        second, second_outcome = _send(pool, conn, "PUT", "/2", DELIVERY)
        outcomes.append((outcome, second_outcome, _sent(theirs)))
    assert head_calls == [True, True, False, False]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1][0][0] == ("reply" if read_first else "raised"), outcomes[0]


_NAMES = st.text(alphabet="aZ-_: \t\r\n\x7f\xe9東", min_size=0, max_size=6)
_VALUES = st.text(alphabet="a /;=\t \r\n\x00\x7f\xa0\xe9東", max_size=12)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["POST", "PUT", "patch", "PO ST", "GET\n", ""]),
    path=st.sampled_from(["/hook", "/a?b=c", "/a b", "/\x00", "/é", "", "https://x.example/y"]),
    extra=st.dictionaries(_NAMES, _VALUES, max_size=4),
    connection=st.sampled_from(CONNECTIONS),
)
def test_any_head_is_written_or_refused_as_http_client_does(head_calls, method, path, extra, connection):
    headers = {**DELIVERY, **extra}
    ours = _exchange(head_calls, connection, method, path, headers, written_by_head=True)
    assert ours == _exchange(head_calls, connection, method, path, headers, written_by_head=False)


def test_a_kept_connection_sends_what_requests_whole_path_sends(subscriber, monkeypatch):
    """Second sends on kept connections, one session's headers a plain dict, against requests'
    whole path, as the endpoint reads them: method, path, every header in order, body."""
    kept_calls = []
    monkeypatch.setattr(netguard, "kept_exchange", lambda *a, **k: kept_calls.append(1) or kept_exchange(*a, **k))
    request = build(subscriber.url("/wire") + "?shop=Müller&x=1 2", method_override="put")
    request = replace(request, headers={**request.headers, "X-Note": "café", "X-Custom": "a b; c=d"})
    plain_dict = session_new()
    plain_dict.headers = dict(plain_dict.headers)
    for session in (whole_path_session(), session_new(), plain_dict):
        for _ in range(2):
            assert request_send(request, timeout=5, session=session).succeeded
    assert kept_calls == [1, 1]
    received = subscriber.received("/wire")
    assert len(received) == 6
    first = received[0]
    for other in received[1:]:
        assert (other.method, list(other.headers.items()), other.body) == (
            first.method,
            list(first.headers.items()),
            first.body,
        )


def test_a_line_found_legal_is_remembered_and_an_illegal_one_never_passes():
    """The lines of a head are checked once: the same head again is the same bytes from what was
    remembered, and a value refused (or a str subclass spelling a remembered one) is checked anew."""
    keys = {k.lower() for k in DELIVERY}
    first = head._head(_connect(*CONNECTIONS[0])[1], "POST", "/hook", DELIVERY, keys)
    assert first is not None
    assert all(line in head._LINES_LEGAL for line in DELIVERY.items())
    assert head._head(_connect(*CONNECTIONS[0])[1], "POST", "/hook", DELIVERY, keys) == first

    class Spelled(str):
        pass

    for value in ("tok-123\r\nX-Evil: 1", "tok\n", Spelled("tok-123")):
        headers = {**DELIVERY, "X-Hub-Token": value}
        assert head._head(_connect(*CONNECTIONS[0])[1], "POST", "/hook", headers, keys) is None
        assert ("X-Hub-Token", value) not in head._LINES_LEGAL or type(value) is not str
