"""One HTTP exchange with an endpoint: build the request, sign it, send it, read the reply.

With routing.netguard (the SSRF guard it mounts on its session), the only module that imports
requests, and it knows nothing of the ORM: callers pass plain values and get a frozen result back,
so it can be tested against a local server with no database.
"""

from __future__ import annotations

import codecs
import functools
import http.cookiejar
import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any
from urllib.parse import quote

import orjson
import requests
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity, get_auth_from_url
from standardwebhooks.webhooks import Webhook

from infra import tracing
from routing.deadline import deadline_watch
from routing.netguard import DestinationBlocked, HostUnresolvable, session_guard

USER_AGENT = "integrator-hub/1"
# Response headers worth keeping beside an attempt (the rest is noise or could hold secrets).
NOTABLE_RESPONSE_HEADERS: tuple[str, ...] = (
    "content-type",
    "content-length",
    "retry-after",
    "location",
    "date",
    "server",
    "x-request-id",
)


@dataclass(frozen=True)
class OutboundRequest:
    method: str
    url: str
    body: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class ExchangeResult:
    method: str
    url: str
    status_code: int | None
    latency_ms: int
    response_headers: Mapping[str, str] = field(default_factory=dict)
    response_body: str = ""
    # The parsed JSON reply; only set when the attempt succeeded.
    reply: Any = None
    error: str = ""
    succeeded: bool = False
    retry_after: str | None = None
    # A failure no retry can change (the guard refused the URL itself): the delivery fails now.
    permanent: bool = False


# `*:updated` and `*:canceled`, and the other spellings of those two actions that the aliases of
# events/messages.py fold for orders, products and users but that any other resource keeps as sent
# (`stock:update`, `subscription:cancelled`): the same verb whoever spells it.
_PUT_ACTIONS = frozenset({"updated", "update", "canceled", "cancelled", "cancel"})


def method_for(message: str, override: str = "") -> str:
    """POST for new things and anything else, PUT for updates and cancellations (seeds/000)."""
    if override:
        return override.upper()
    action = message.split(":", 1)[-1]
    return "PUT" if action in _PUT_ACTIONS else "POST"


def request_build(
    *,
    url: str,
    message: str,
    message_id: str,
    payload: Mapping[str, Any],
    parameters: Sequence[Mapping[str, Any]],
    webhook_id: str,
    signing_secret: str,
    token: str,
    store_name: str = "",
    method_override: str = "",
    timestamp: datetime | None = None,
    previous_signing_secret: str = "",
) -> OutboundRequest:
    """The envelope with payload.parameters, serialized once so that the bytes signed are the bytes sent.

    With a previous secret (a rotation's grace period) the request carries both signatures,
    space-separated as Standard Webhooks allows, so a verifier with either secret accepts it.
    """
    body_payload = dict(payload)
    body_payload["parameters"] = [
        {"name": p.get("name"), "value": p.get("value")} for p in parameters if isinstance(p, Mapping)
    ]
    body = json_compact({"message": message, "message_id": message_id, "payload": body_payload})
    when = (timestamp or datetime.now(UTC)).astimezone(UTC)
    signature = " ".join(
        Webhook(secret).sign(msg_id=webhook_id, timestamp=when, data=body)
        for secret in (signing_secret, previous_signing_secret)
        if secret
    )
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "X-Hub-Store": header_value(store_name),
        "X-Hub-Token": header_value(token),
        "X-Augury-Token": header_value(token),
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }
    return OutboundRequest(method=method_for(message, method_override), url=url, body=body, headers=headers)


# Where orjson and json.dumps spell the same number differently: only floats that Python writes in
# exponent form (below 1e-4 or from 1e16 on: `1e-07`, `1e+16`), which orjson writes as `1e-7`,
# `1e16` or `0.00001`. Each pattern starts with a literal, which `re` finds fast; a match is then
# checked to be a number, not part of a string.
_FLOAT_SPELLING_CANDIDATES = (re.compile(rb"e(?<=[0-9]e)[-0-9]"), re.compile(rb"0\.0000"))
_NUMBER_CHARS = frozenset(b"0123456789.")


def json_compact(value: Any) -> str:
    """`json.dumps(value, separators=(",", ":"), ensure_ascii=False)`, the same text, in a tenth of
    the time: orjson writes it (keys in insertion order, non-ASCII as UTF-8, the same escapes), and
    json.dumps takes over for what orjson would write differently or refuses (an integer beyond 64
    bits, a non-string key, a lone surrogate, another type). NaN and Infinity, which orjson writes
    as null, never get here: payloads and parameters come from validated, stored JSON."""
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:
        data = None
    if data is None or _float_spelled_differently(data):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return data.decode("utf-8")


def _float_spelled_differently(data: bytes) -> bool:
    for match in (m for pattern in _FLOAT_SPELLING_CANDIDATES for m in pattern.finditer(data)):
        # Back over the number's digits to what precedes it: a number in the document follows
        # `:`, `[` or `,` (orjson writes no spaces) or starts it; `5e3` in a UUID string follows a
        # letter or `"`.
        i = match.start() - 1
        while i >= 0 and data[i] in _NUMBER_CHARS:
            i -= 1
        if i >= 0 and data[i] == 0x2D:  # "-"
            i -= 1
        if i < 0 or data[i] in b":[,":
            return True
    return False


# Printable ASCII: what every HTTP stack carries unchanged in a header value.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F))


def header_value(value: str) -> str:
    """A store name or token as a header value: printable ASCII as is; anything else (a store
    named 'Boutique Müller' or '東京店', a control character) percent-encoded as UTF-8. http.client
    cannot send it otherwise (it crashed the attempt, and the delivery never got an answer), and
    latin-1 bytes would reach a UTF-8 reader garbled."""
    return quote(value, safe=_HEADER_SAFE)


_local = threading.local()
# A policy that allows no domain: an endpoint's Set-Cookie is never stored, so never sent back.
_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])


def session_new() -> requests.Session:
    """A pooled session behind the SSRF guard (routing.netguard): every new connection resolves the
    host, refuses loopback/private/link-local/metadata addresses unless HUB_ALLOW_PRIVATE_DESTINATIONS
    is on (read at each connection), and dials the address it checked. It ignores proxy settings
    from the environment (an endpoint is reached directly or not at all), follows no redirects
    and keeps no cookies.

    No cookies, because one session serves every subscription of the process: a cookie one
    tenant's endpoint set would go to every other endpoint on that host (two stores' hooks on one
    integration SaaS), and a delivery would depend on which deliveries that process sent before.
    Svix, Convoy and Hook0 keep none either; each attempt is what its subscription says."""
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(_NO_COOKIES)
    return session_guard(session, pool_connections=20, pool_maxsize=20, max_retries=0)


def session_get() -> requests.Session:
    """The outbound session of this process (and thread): made once, after any fork, then reused
    so that connections to an endpoint stay open between deliveries."""
    session = getattr(_local, "session", None)
    if session is None or getattr(_local, "pid", None) != os.getpid():
        session = session_new()
        _local.session = session
        _local.pid = os.getpid()
    return session


# Subscription.clean refuses more (the admin form), but a row written any other way must not hold a
# worker past Celery's time limit either, which would kill the attempt before it is recorded.
TIMEOUT_MAX_SECONDS = 120.0
TIMEOUT_DEFAULT_SECONDS = 10.0


def timeout_bounded(timeout: float | None) -> float:
    """The subscription's timeout, capped at TIMEOUT_MAX_SECONDS; none or not positive (which
    requests refuses) means the default."""
    if timeout is None or not timeout > 0:
        return TIMEOUT_DEFAULT_SECONDS
    return min(float(timeout), TIMEOUT_MAX_SECONDS)


def request_send(
    request: OutboundRequest,
    *,
    timeout: float,
    body_max_chars: int = 4096,
    read_max_bytes: int = 1024 * 1024,
    session: requests.Session | None = None,
) -> ExchangeResult:
    """Send one request and read the reply; never raises for anything the network or endpoint does.

    `timeout` is a wall-clock deadline over the whole exchange (connect, send, status line,
    headers, body; routing.deadline), not only a bound on each socket operation: an endpoint that
    trickles its reply a byte at a time fails at the deadline like one that says nothing."""
    session = session or session_get()
    timeout = timeout_bounded(timeout)
    started = time.monotonic()

    def latency() -> int:
        return int((time.monotonic() - started) * 1000)

    with deadline_watch(timeout) as watch:

        def failed(error: str, **kwargs: Any) -> ExchangeResult:
            if watch.end():
                # Whatever the cut made the exchange raise, the cause is the deadline: a timeout.
                error = deadline_error(timeout, kwargs.pop("status_code", None))
                kwargs["status_code"] = None
            return ExchangeResult(method=request.method, url=request.url, latency_ms=latency(), error=error, **kwargs)

        try:
            response = _response_get(session, request, request.body.encode("utf-8"), timeout)
        except requests.Timeout:
            return failed(f"timed out after {timeout:g}s", status_code=None)
        except HostUnresolvable as exc:
            return failed(f"connection failed: {_reason(exc)}", status_code=None)
        except DestinationBlocked as exc:
            return failed(f"refused by the SSRF guard: {_reason(exc)}", status_code=None, permanent=exc.permanent)
        except requests.ConnectionError as exc:
            return failed(f"connection failed: {_reason(exc)}", status_code=None)
        except requests.RequestException as exc:
            return failed(f"request failed: {_reason(exc)}", status_code=None)
        except (UnicodeError, ValueError) as exc:
            # A request http.client refuses to write is a failed attempt on record, not a crash that
            # leaves the delivery claimed with no answer until its lease runs out, again and again.
            return failed(f"request could not be sent: {_reason(exc)}", status_code=None)

        with response:
            headers = {k.lower(): v for k, v in response.headers.items() if k.lower() in NOTABLE_RESPONSE_HEADERS}
            status = response.status_code
            try:
                raw, complete = _read_capped(response, read_max_bytes)
            except (requests.RequestException, OSError) as exc:
                return failed(
                    f"reading the response failed: {_reason(exc)}", status_code=status, response_headers=headers
                )
            finally:
                # Before `with response` hands the connection back to the pool for another request;
                # one the deadline cut is closed instead.
                if watch.end():
                    response.raw.close()
            text = storable(reply_text(raw, response.headers.get("content-type", "")))
            common = {"status_code": status, "response_headers": headers, "response_body": text[:body_max_chars]}
            common["retry_after"] = headers.get("retry-after")
            if watch.expired:
                # Cut at the deadline: what arrived until then may look complete (a reply that ends
                # with the connection) but is not.
                return failed(deadline_error(timeout, status), **common)
            if not complete:
                return failed(f"response larger than {read_max_bytes} bytes", **common)
            if not 200 <= status < 300:
                return failed(f"HTTP {status}", **common)
            try:
                # Any JSON document is a JSON reply, `null` included; only an object carries §3's fields.
                parsed = (
                    json.loads(text, parse_constant=_json_constant_refuse, parse_float=_json_float)
                    if text.strip()
                    else _NOT_JSON
                )
                reply = _json_storable(parsed)
            except ValueError:
                reply = _NOT_JSON
            except RecursionError:
                # A reply nested a thousand deep: an answer nobody can use, and one that must not crash
                # the attempt (the delivery would stay claimed with nothing recorded).
                return failed(f"HTTP {status} but the JSON body is nested too deep to read", **common)
            if reply is _NOT_JSON:
                return failed(f"HTTP {status} but the body is not JSON", **common)
    return ExchangeResult(
        method=request.method, url=request.url, latency_ms=latency(), reply=reply, succeeded=True, **common
    )


def deadline_error(timeout: float, status: int | None = None) -> str:
    """The error of an exchange cut at its deadline; says "timed out" as a socket timeout does,
    since it is one (retried alike, counted alike)."""
    seen = f" (HTTP {status} began, the rest did not follow)" if status is not None else ""
    return f"timed out: no complete reply within {timeout:g}s{seen}"


def _response_get(
    session: requests.Session, request: OutboundRequest, body: bytes, timeout: float
) -> requests.Response:
    """What `session.request(..., allow_redirects=False, stream=True)` does, without the parts of
    requests' per-request work that a delivery session never needs: merging cookies, hooks, auth,
    params and environment settings it does not have, and preparing the same endpoint URL again.

    Same bytes on the wire (the session's default headers merged with the request's, checked as
    requests checks them, Content-Length), sent through the same adapter: the SSRF guard still
    resolves and checks every new connection; TLS settings, timeouts and requests' exceptions (so
    every error text) are the adapter's. A session with anything the shortcut leaves out (cookies
    an endpoint set, hooks, auth, proxies, which the guard then refuses, environment settings, a
    subclass) takes requests' whole path.
    """
    # Traced, requests' own path: its instrumentation wraps Session.send, which the shortcut skips.
    shortcut = _session_plain(session) and body and not tracing.tracing_enabled()
    url = _url_prepared(request.url) if shortcut else None
    if url is None:
        return session.request(
            request.method,
            request.url,
            data=body,
            headers=dict(request.headers),
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        )
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(session.headers)
    headers.update(request.headers)
    for item in headers.items():
        check_header_validity(item)
    headers["Content-Length"] = str(len(body))
    prepared = requests.PreparedRequest()
    prepared.method = request.method.upper()
    prepared.url = url
    prepared.headers = headers
    prepared.body = body
    response = session.get_adapter(url).send(
        prepared, stream=True, timeout=timeout, verify=session.verify, cert=session.cert, proxies={}
    )
    if "set-cookie" in response.raw.headers and session.cookies.get_policy() is not _NO_COOKIES:
        # As requests would for a session a caller made with a cookie policy of its own: the
        # session sends them back next time, through requests' whole path. session_new's keeps
        # none, so a load balancer's cookie on every reply costs nothing to read.
        extract_cookies_to_jar(session.cookies, prepared, response.raw)
    return response


def _session_plain(session: requests.Session) -> bool:
    """Nothing in the session that requests' whole path would add to a request."""
    return (
        type(session) is requests.Session
        and not session.trust_env
        and not session.cookies
        and not session.auth
        and not session.params
        and not session.proxies
        and not any(session.hooks.values())
        and None not in session.headers.values()
    )


@functools.lru_cache(maxsize=1024)
def _url_prepared(url: str) -> str | None:
    """requests' preparation of a URL (IDNA host, requoted path), once per endpoint URL: it depends
    on nothing else. None for a URL with credentials in it, which requests turns into an
    Authorization header (the shortcut leaves that to requests). Errors are not cached."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, None)
    if any(get_auth_from_url(prepared.url or "")):
        return None
    return prepared.url


_NOT_JSON = object()


def _json_constant_refuse(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), and PostgreSQL's jsonb refuses them."""
    raise ValueError(f"{name} is not JSON")


def _json_float(text: str) -> float:
    """A number too large for a double (1e400) would become Infinity, which jsonb refuses too."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} does not fit a double")
    return value


def reply_text(raw: bytes, content_type: str) -> str:
    """The endpoint's reply as text. JSON is UTF-8 (RFC 8259), so that is the default whatever the
    media type: requests would read a `text/plain` or `text/html` reply without a charset as
    ISO-8859-1 and garble every accented notification. A charset the endpoint names is honoured,
    and a byte order mark (some .NET and Windows endpoints send one) is dropped."""
    header = Message()
    header["content-type"] = content_type
    charset = header.get_content_charset()
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = None
    return raw.decode(charset or "utf-8", errors="replace").removeprefix("\ufeff")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """PostgreSQL cannot store NUL (text or jsonb), and no database can encode a lone surrogate
    (which json.loads makes of a `\\ud83d` escape) as UTF-8: an endpoint's reply holding either
    crashed the attempt before it was recorded, leaving the delivery claimed until its lease ran
    out, and the same again on every retry. U+FFFD marks where."""
    return _UNSTORABLE.sub("\ufffd", text)


def _json_storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_json_storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): _json_storable(item) for key, item in value.items()}
    return value


def _read_capped(response: requests.Response, limit: int) -> tuple[bytes, bool]:
    """Read at most `limit` bytes. Time is the deadline's (request_send): a reply that trickles is
    cut there, however small each piece."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=16384):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], False
    return b"".join(chunks), True


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:500]
