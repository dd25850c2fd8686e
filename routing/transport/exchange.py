"""The HTTP exchange: send one request within a wall-clock deadline and read the reply, never raising
for anything the network or the endpoint does. The session it sends through is behind the SSRF
guard (routing.transport.netguard) and the deadline's watchdog (routing.transport.deadline).
"""

from __future__ import annotations

import functools
import http.cookiejar
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity, get_auth_from_url

from infra import tracing
from routing.transport.deadline import deadline_watch
from routing.transport.gate import gate_waited_take
from routing.transport.kept import KeptReply
from routing.transport.netguard import DestinationBlocked, GuardedAdapter, HostUnresolvable, session_guard
from routing.transport.reply import NOT_JSON, reply_json, reply_text, storable
from routing.transport.request import OutboundRequest

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


_local = threading.local()
# A policy that allows no domain: an endpoint's Set-Cookie is never stored, so never sent back.
_NO_COOKIES = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])


def session_new() -> requests.Session:
    """A pooled session behind the SSRF guard (routing.transport.netguard): every new connection resolves the
    host, refuses loopback/private/link-local/metadata addresses unless HUB_ALLOW_PRIVATE_DESTINATIONS
    is on (read at each connection), and dials the address it checked. It ignores proxy settings
    from the environment (an endpoint is reached directly or not at all), follows no redirects
    and keeps no cookies.

    No cookies, because one session serves every subscription of the process: a cookie one
    tenant's endpoint set would go to every other endpoint on that host (two stores' hooks on one
    integration SaaS), and a delivery would depend on which deliveries that process sent before:
    each attempt is what its subscription says."""
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
    headers, body; routing.transport.deadline), not only a bound on each socket operation: an endpoint that
    trickles its reply a byte at a time fails at the deadline like one that says nothing."""
    session = session or session_get()
    timeout = timeout_bounded(timeout)
    started = time.monotonic()
    gate_waited_take()  # a wait an earlier exchange on this thread left unread is not this one's

    def latency() -> int:
        return int((time.monotonic() - started - gate_waited_take()) * 1000)

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
                reply = reply_json(text)
            except RecursionError:
                # A reply nested a thousand deep: an answer nobody can use, and one that must not crash
                # the attempt (the delivery would stay claimed with nothing recorded).
                return failed(f"HTTP {status} but the JSON body is nested too deep to read", **common)
            if reply is NOT_JSON:
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
) -> requests.Response | KeptReply:
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
    # CaseInsensitiveDict(session.headers) updated with the request's, as a plain dict: a name
    # keeps its first place and takes its last spelling. urllib3 writes the same lines from either.
    merged: dict[str, tuple[str, str]] = {}
    for key, value in (*_session_headers(session), *request.headers.items()):
        merged[key.lower()] = (key, value)
    for item in merged.values():
        # Most of a delivery's headers are the same each time (only the signature's three change):
        # a (name, value) found valid once is valid again.
        if type(item[1]) is str and item in _HEADERS_VALID:
            continue
        check_header_validity(item)
        if type(item[1]) is str:
            if len(_HEADERS_VALID) >= 4096:
                _HEADERS_VALID.clear()
            _HEADERS_VALID.add(item)
    merged["content-length"] = ("Content-Length", str(len(body)))
    wire = dict(merged.values())
    prepared = requests.PreparedRequest()
    prepared.method = request.method.upper()
    prepared.url = url
    # CaseInsensitiveDict(wire), whose store is `merged` (lower-case name -> name and value, in
    # order), without its item-by-item update.
    prepared.headers = CaseInsensitiveDict.__new__(CaseInsensitiveDict)
    prepared.headers._store = OrderedDict(merged)
    prepared.body = body
    adapter = session.get_adapter(url)
    if type(adapter) is GuardedAdapter:
        response = adapter.send_plain(prepared, timeout=timeout, verify=session.verify, cert=session.cert, headers=wire)
    else:
        response = adapter.send(
            prepared, stream=True, timeout=timeout, verify=session.verify, cert=session.cert, proxies={}
        )
    if "set-cookie" in response.raw.headers and session.cookies.get_policy() is not _NO_COOKIES:
        # As requests would for a session a caller made with a cookie policy of its own: the
        # session sends them back next time, through requests' whole path. session_new's keeps
        # none, so a load balancer's cookie on every reply costs nothing to read.
        extract_cookies_to_jar(session.cookies, prepared, response.raw)
    return response


# Header lines check_header_validity passed (bounded: cleared when full).
_HEADERS_VALID: set[tuple[str, str]] = set()


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
        and None not in (value for _, value in _session_headers(session))
    )


def _session_headers(session: requests.Session) -> Iterable[tuple[str, Any]]:
    """session.headers.items(); a CaseInsensitiveDict's from its store, without a lookup per name."""
    headers = session.headers
    if type(headers) is CaseInsensitiveDict:
        return headers._store.values()
    return headers.items()


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


def _read_capped(response: requests.Response | KeptReply, limit: int) -> tuple[bytes, bool]:
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


class _AttemptLike(Protocol):
    succeeded: bool
    status_code: int | None
    error: str


def attempt_outcome(result: _AttemptLike) -> str:
    """A small, fixed vocabulary for what kind of thing happened on the wire, of an exchange or a
    recorded Attempt: the metrics label, and what a store is told instead of the error text (which
    can name the endpoint's host, port and path)."""
    if result.succeeded:
        return "success"
    if result.status_code is None:
        return "timeout" if "timed out" in result.error.lower() else "connection_error"
    if 200 <= result.status_code < 300:
        return "invalid_reply"
    return "http_error"
