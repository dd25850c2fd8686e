"""One HTTP exchange against the real local subscriber; no database."""

import http.cookiejar
import json
import socket
import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from routing.models import signing_secret_new
from routing.transport.exchange import request_send, session_get, session_new
from routing.transport.request import json_compact, method_for, request_build
from tests.live import Reply, free_port, wait_until

SECRET = signing_secret_new()


def build(url: str, message: str = "order:new", **kwargs):
    return request_build(
        url=url,
        message=message,
        message_id="m-1",
        payload={"order": {"number": "R1"}},
        parameters=[{"name": "key", "value": "v"}],
        webhook_id="evt-1",
        signing_secret=SECRET,
        token="tok",
        store_name="shop",
        **kwargs,
    )


@pytest.mark.parametrize(
    ("message", "override", "method"),
    [
        ("order:new", "", "POST"),
        ("shipment:confirm", "", "POST"),
        ("order:updated", "", "PUT"),
        ("order:canceled", "", "PUT"),
        ("product:updated", "", "PUT"),
        ("order:new", "PUT", "PUT"),
        ("order:updated", "patch", "PATCH"),
    ],
)
def test_method_by_message_with_override(message, override, method):
    assert method_for(message, override) == method


def test_request_is_signed_with_standard_webhooks_and_carries_parameters():
    request = build("http://example.invalid/x", timestamp=datetime.now(UTC))
    headers = {k.lower(): v for k, v in request.headers.items()}
    body = Webhook(SECRET).verify(request.body, headers)
    assert body == {
        "message": "order:new",
        "message_id": "m-1",
        "payload": {"order": {"number": "R1"}, "parameters": [{"name": "key", "value": "v"}]},
    }
    assert headers["x-hub-token"] == headers["x-augury-token"] == "tok"
    assert headers["x-hub-store"] == "shop"
    assert headers["webhook-id"] == "evt-1"
    assert headers["webhook-signature"].startswith("v1,")


def test_2xx_json_is_success_with_the_parsed_reply(subscriber):
    subscriber.program("/ok", Reply.ok(message_id="m-1", notifications=[]))
    result = request_send(build(subscriber.url("/ok")), timeout=5)
    assert result.succeeded and result.status_code == 200 and result.error == ""
    assert result.reply == {"message_id": "m-1", "notifications": []}
    assert result.response_headers["content-type"] == "application/json"
    [received] = subscriber.received("/ok")
    assert received.method == "POST" and received.body.decode() == build(subscriber.url("/ok")).body


def test_2xx_without_json_is_a_failure(subscriber):
    subscriber.program("/html", Reply.not_json())
    result = request_send(build(subscriber.url("/html")), timeout=5)
    assert not result.succeeded and result.status_code == 200
    assert "not JSON" in result.error
    assert result.response_body == "<html>thanks</html>"


def test_error_status_keeps_retry_after_and_truncates_the_body(subscriber):
    subscriber.program("/busy", Reply(429, body=b"x" * 5000, headers={"Retry-After": "7"}))
    result = request_send(build(subscriber.url("/busy")), timeout=5, body_max_chars=100)
    assert (result.succeeded, result.status_code, result.retry_after) == (False, 429, "7")
    assert result.response_body == "x" * 100
    assert result.error == "HTTP 429"


def test_redirects_are_not_followed(subscriber):
    subscriber.program("/moved", Reply(302, body=b"", headers={"Location": subscriber.url("/ok")}))
    result = request_send(build(subscriber.url("/moved")), timeout=5)
    assert not result.succeeded and result.status_code == 302
    assert result.response_headers["location"] == subscriber.url("/ok")
    assert subscriber.received("/ok") == []


def test_timeout_and_refused_connection_are_failed_results_not_exceptions(subscriber):
    subscriber.program("/slow", Reply.slow(3))
    slow = request_send(build(subscriber.url("/slow")), timeout=0.3)
    assert not slow.succeeded and slow.status_code is None and "timed out" in slow.error
    refused = request_send(build(f"http://127.0.0.1:{free_port()}/"), timeout=2)
    assert not refused.succeeded and refused.status_code is None and "connection failed" in refused.error


# A drip far longer than the timeout: the margin between them is what the assertions rest on.
DRIP_SECONDS = 60.0


@pytest.mark.parametrize("during", ["body", "headers"])
def test_a_reply_that_drips_is_cut_at_the_deadline_and_the_session_goes_on(subscriber, during):
    """Every read gets a byte long before the socket timeout; the exchange still ends at the
    deadline, as a timeout, and the next request on the same session is answered."""
    subscriber.program("/drip", Reply.drip(every=0.2, seconds=DRIP_SECONDS, during=during))
    session = session_new()
    result = request_send(build(subscriber.url("/drip")), timeout=1, session=session)
    assert not result.succeeded and result.status_code is None
    assert result.error.startswith("timed out: no complete reply within 1s"), result.error
    assert result.latency_ms < DRIP_SECONDS * 1000 / 4
    # The hub hung up: the endpoint's next byte found the connection gone.
    wait_until(lambda: subscriber.drips("/drip") == ["cut"], timeout=DRIP_SECONDS / 4)
    assert request_send(build(subscriber.url("/ok")), timeout=5, session=session).succeeded


def test_a_tls_handshake_that_drips_is_cut_at_the_deadline_too():
    """Connecting is inside the deadline, TLS handshake included: a server that starts a handshake
    record and then sends one byte of it at a time fails the attempt at the deadline, as such."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            try:
                conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KB, announced
                while not stop.wait(0.2):
                    conn.sendall(b"\x00")
            except OSError:
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/"
        result = request_send(build(url), timeout=1, session=session_new())
        assert not result.succeeded and result.status_code is None
        assert result.error.startswith("timed out: no complete reply within 1s"), result.error
        assert result.latency_ms < DRIP_SECONDS * 1000 / 4
    finally:
        stop.set()
        listener.close()
        server.join(timeout=5)


def test_a_reply_within_the_deadline_reuses_the_connection(subscriber):
    """The deadline costs the happy path nothing it relies on: keep-alive still keeps the connection."""
    session = session_new()
    results = [request_send(build(subscriber.url("/ok")), timeout=5, session=session) for _ in range(5)]
    assert all(r.succeeded for r in results)
    pools = [p for p in session.get_adapter("http://").poolmanager.pools._container.values()]
    assert sum(p.num_connections for p in pools) == 1


def test_the_session_is_reused_and_ignores_environment_proxies():
    assert session_get() is session_get()
    assert session_get().trust_env is False


# JSON values as they come out of jsonb, plus the floats that Python and orjson spell differently
# (below 1e-4, from 1e16 on), integers beyond 64 bits, and strings that look like numbers.
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e-7, 0.00001, 1.5e-5, 1e16, 1.2345678901234567e20, -0.0, 99.95])
    | st.text()
    | st.sampled_from(["5e3", "1e-7", "0.00001", ":1e5", "[0.0000", "ab5e-9cd"])
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@given(_json_values)
@hypothesis_settings(max_examples=400, deadline=None)
def test_the_body_is_the_text_json_dumps_writes(value):
    assert json_compact(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_a_request_goes_out_byte_for_byte_as_through_requests_own_path(subscriber):
    """request_send skips parts of requests' per-request work; what the endpoint receives (method,
    path, every header in order, body) is what requests' whole path sends, which a session with a
    response hook takes."""
    url = subscriber.url("/wire") + "?shop=Müller&x=1 2"
    request = build(url, method_override="patch")
    whole = session_new()
    whole.hooks["response"].append(lambda response, **kwargs: response)
    assert request_send(request, timeout=5, session=whole).succeeded
    assert request_send(request, timeout=5, session=session_new()).succeeded
    through_requests, shortcut = subscriber.received("/wire")
    assert through_requests.method == shortcut.method == "PATCH"
    assert list(shortcut.headers.items()) == list(through_requests.headers.items())
    assert shortcut.body == through_requests.body == request.body.encode()


def test_the_delivery_session_keeps_no_cookie_an_endpoint_sets(subscriber):
    # One session serves every subscription of a process: a kept cookie would reach the other
    # tenants' endpoints on the same host.
    subscriber.program("/cookie", Reply(200, json={}, headers={"Set-Cookie": "lb=node-2; Path=/"}), Reply.ok())
    subscriber.program("/other-tenant", Reply.ok())
    session = session_new()
    assert request_send(build(subscriber.url("/cookie")), timeout=5, session=session).succeeded
    assert request_send(build(subscriber.url("/other-tenant")), timeout=5, session=session).succeeded
    assert request_send(build(subscriber.url("/cookie")), timeout=5, session=session).succeeded
    assert not session.cookies
    received = [*subscriber.received("/cookie"), *subscriber.received("/other-tenant")]
    assert len(received) == 3 and all("Cookie" not in r.headers for r in received)


def test_a_session_a_caller_made_with_cookies_still_sends_them_back(subscriber):
    # The shortcut defers to the session's own cookie policy, as requests' whole path does.
    subscriber.program("/cookie", Reply(200, json={}, headers={"Set-Cookie": "lb=node-2; Path=/"}), Reply.ok())
    session = session_new()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy())
    request = build(subscriber.url("/cookie"))
    assert request_send(request, timeout=5, session=session).succeeded
    assert request_send(request, timeout=5, session=session).succeeded
    first, second = subscriber.received("/cookie")
    assert "Cookie" not in first.headers and second.headers["Cookie"] == "lb=node-2"
