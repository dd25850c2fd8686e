"""The delivery session's short path (GuardedAdapter.send_plain, header_value's and path_for's
early returns, the cached charset and signer) against what the longer paths give; no database."""

import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import quote

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from routing.formats import ENVELOPE, FLAT, TRANSFORM, path_for
from routing.models import signing_secret_new
from routing.transport.exchange import _NO_COOKIES, request_send, session_new
from routing.transport.netguard import session_guard
from routing.transport.reply import reply_text
from routing.transport.request import _HEADER_SAFE, header_value, signature_headers
from tests.live import Reply, free_port
from tests.routing.test_transport import SECRET, build


def whole_path_session(**guard: object) -> requests.Session:
    """A delivery session that a response hook sends through requests' whole path."""
    session = session_new() if not guard else plain_session(**guard)
    session.hooks["response"].append(lambda response, **kwargs: response)
    return session


def plain_session(**guard: object) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(_NO_COOKIES)
    return session_guard(session, max_retries=0, **guard)  # type: ignore[arg-type]


def request_read(conn: socket.socket) -> bool:
    """Reads one whole request (head and Content-Length body) off `conn`; False if the client
    closed first. A server that closes with part of a request unread makes the kernel reset the
    connection, which the client reads as another error than a plain hang-up."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


@pytest.fixture
def hangs_up() -> Iterator[str]:
    """A server that reads each request whole and closes the connection without a word."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                request_read(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    stop.set()
    thread.join(timeout=2)
    server.close()


def outcome(result):
    # A timeout reads as the socket's or the wall-clock deadline's, whichever fires first: both
    # paths share that race, so only its kind is compared.
    error = "timed out" if result.error.startswith("timed out") else result.error
    return (result.succeeded, result.status_code, error, result.permanent, result.response_body)


def test_each_failure_reads_as_through_requests_own_path(subscriber, hangs_up):
    """Same error text, status and permanence from the short path as from requests' whole path,
    for each way an exchange fails before a reply: refused, hung up on, timed out, no host."""
    subscriber.program("/slow", Reply.slow(2), Reply.slow(2))
    urls = [f"http://127.0.0.1:{free_port()}/", hangs_up, subscriber.url("/slow"), "http://no-such-host.invalid/"]
    for url in urls:
        whole = request_send(build(url), timeout=0.5, session=whole_path_session())
        short = request_send(build(url), timeout=0.5, session=session_new())
        assert not short.succeeded, url
        assert outcome(short) == outcome(whole), url


def test_the_guard_refuses_alike_on_the_short_path(subscriber):
    # Loopback with private destinations off, and a URL whose empty userinfo requests would not
    # turn into credentials but the guard refuses all the same.
    for url in (subscriber.url("/ok"), subscriber.url("/ok").replace("http://", "http://@")):
        whole = request_send(build(url), timeout=2, session=whole_path_session(allow_private=False))
        short = request_send(build(url), timeout=2, session=plain_session(allow_private=False))
        assert "refused by the SSRF guard" in short.error, short.error
        assert outcome(short) == outcome(whole), url
    assert subscriber.received("/ok") == []


def test_a_pool_the_manager_let_go_is_taken_again(subscriber):
    """The short path keeps each URL's pool; when the manager evicts (and closes) it for another
    host's, the next request to that URL gets a live one."""
    subscriber.program("/a", Reply.ok(), Reply.ok())
    subscriber.program("/b", Reply.ok())
    session = plain_session(pool_connections=1, pool_maxsize=1)
    first, other = subscriber.url("/a"), subscriber.url("/b").replace("127.0.0.1", "localhost")
    for url in (first, other, first):
        assert request_send(build(url), timeout=5, session=session).succeeded, url
    assert len(subscriber.received("/a")) == 2 and len(subscriber.received("/b")) == 1


@pytest.mark.parametrize(
    "value",
    [
        *(chr(c) for c in range(0x80)),
        "",
        "Boutique Müller",
        "東京店",
        "tok-123_ABC.~%20+/=",
        "a\r\nX-Injected: 1",
        "trailing space ",
    ],
)
def test_header_value_is_quote_with_the_printable_ascii_kept(value):
    assert header_value(value) == quote(value, safe=_HEADER_SAFE)


@pytest.mark.parametrize("payload_format", [ENVELOPE, FLAT, TRANSFORM])
@pytest.mark.parametrize("message", ["order:new", "order:updated", "shipment:confirm", "get_orders"])
@pytest.mark.parametrize("paths", [None, {}])
def test_path_for_without_paths(payload_format, message, paths):
    resource, _, action = message.partition(":")
    expected = "" if payload_format != FLAT else path_for(message, {"*": "/{verb}_{resource}"}, FLAT)
    if payload_format == FLAT and not action:
        expected = f"/{resource}"
    assert path_for(message, paths, payload_format) == expected


def test_a_long_content_type_still_names_its_charset():
    padding = "; x=" + "y" * 300
    assert reply_text("é".encode("latin-1"), "text/plain; charset=iso-8859-1" + padding) == "é"
    assert reply_text("é".encode("latin-1"), "text/plain; charset=iso-8859-1") == "é"
    assert reply_text("é".encode(), "text/plain") == "é"


def test_signatures_from_the_kept_signer_verify_with_each_secret():
    previous = signing_secret_new()
    for _ in range(2):
        headers = signature_headers(body='{"a":1}', webhook_id="evt-9", secrets=(SECRET, previous))
        Webhook(SECRET).verify('{"a":1}', headers)
        Webhook(previous).verify('{"a":1}', headers)


def test_a_header_requests_refuses_is_refused_alike_every_time(subscriber):
    """The short path remembers header lines found valid, never invalid ones: a value requests
    refuses fails each attempt as requests' whole path fails it, and nothing is sent."""
    good = build(subscriber.url("/h"))
    bad = replace(good, headers={**good.headers, "X-Hub-Store": " leading space"})
    for _ in range(2):
        assert request_send(good, timeout=2, session=session_new()).succeeded
        whole = request_send(bad, timeout=2, session=whole_path_session())
        short = request_send(bad, timeout=2, session=session_new())
        assert short.error.startswith("request failed: Invalid leading whitespace"), short.error
        assert outcome(short) == outcome(whole)
    assert len(subscriber.received("/h")) == 2


def test_the_short_paths_prepared_headers_are_requests_own(subscriber):
    """The prepared request a new connection's Response carries: the headers requests' own
    preparation gives it (the session's merged with the request's, Content-Length), in order."""
    from requests.structures import CaseInsensitiveDict

    from routing.transport.exchange import _response_get

    request = build(subscriber.url("/prepared"))
    session = session_new()
    body = request.body.encode()
    response = _response_get(session, request, body, 5)
    response.close()
    theirs = session.prepare_request(
        requests.Request(request.method, request.url, data=body, headers=request.headers)
    ).headers
    ours = response.request.headers
    assert type(ours) is CaseInsensitiveDict and type(ours._store) is type(theirs._store)
    assert list(ours.items()) == list(theirs.items())
    assert ours["CONTENT-length"] == str(len(body))
