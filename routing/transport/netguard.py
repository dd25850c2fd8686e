"""The outbound SSRF guard: each connection is checked when it is made, which defeats DNS rebinding
(docs/security.md)."""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter, TimeoutSauce
from requests.exceptions import ConnectTimeout, InvalidHeader, InvalidURL, ProxyError, ReadTimeout, RetryError, SSLError
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    LocationValueError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import InvalidHeader as Urllib3InvalidHeader
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.url import _encode_target

from routing.transport.deadline import DeadlineConnectionMixin
from routing.transport.kept import KeptConnectionMixin, KeptReply, kept_exchange, kept_usable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata and credential services: named for a clearer error, and for the two not link-local.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "fd00:ec2::254",
        "169.254.170.2",
        "169.254.170.23",
        "fd00:ec2::23",
        "100.100.100.200",
    )
)
CGNAT_NETWORK = ipaddress.ip_network("100.64.0.0/10")
# Deprecated (RFC 3879) but still routed by some stacks; Python counts it as global.
SITE_LOCAL_NETWORK = ipaddress.ip_network("fec0::/10")
# IPv6 forms that reach the IPv4 host in their last 32 bits (NAT64, SIIT, IPv4-compatible).
EMBEDDING_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96")
)

ALLOW_SETTING = "HUB_ALLOW_PRIVATE_DESTINATIONS"


class DestinationBlocked(requests.exceptions.ConnectionError):
    """A delivery aimed at a forbidden address; a ConnectionError, so it is recorded as a failed attempt."""

    # A refusal that trying again cannot change: the delivery fails at once instead of retrying.
    permanent: bool = False


class HostUnresolvable(DestinationBlocked):
    """The host has no address to check (and so none to connect to)."""


class CredentialsInUrl(DestinationBlocked):
    """user:password in a URL, which requests would send as an Authorization header; not retried."""

    permanent = True


def url_has_credentials(url: str) -> bool:
    """Any userinfo (`user:pw@`, `user@`, `:pw@`, even an empty `@`) before the host."""
    return "@" in urlsplit(url).netloc


def address_block_reason(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why an address is off limits for deliveries, or None; link-local stays off limits whatever allow_private."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = ipv4_embedded(address)
        if embedded is not None:
            reason = address_block_reason(embedded, allow_private=allow_private)
            return f"{reason} (embedded {embedded})" if reason else None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if allow_private:
        return None
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.version == 4 and address in CGNAT_NETWORK:
        return "a carrier-grade NAT (shared) address"
    if address.is_multicast:
        return "a multicast address"
    if address.version == 6 and address in SITE_LOCAL_NETWORK:
        return "a deprecated site-local address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def ipv4_embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 host an IPv6 address reaches through a translator or tunnel, if it names one."""
    embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
    if embedded is None and int(address) > 1 and any(address in network for network in EMBEDDING_NETWORKS):
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return embedded


def host_addresses(host: str, port: int) -> list[str]:
    """Every address a host name resolves to (an IP literal resolves to itself, without DNS)."""
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(sockaddr[0])
    return seen


def host_addresses_checked(host: str, port: int, *, allow_private: bool = False) -> list[str]:
    """The addresses to connect to; one forbidden address refuses the whole name (docs/security.md)."""
    try:
        addresses = host_addresses(host, port)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostUnresolvable(f"The host '{host}' cannot be resolved: {exc}.") from None
    for text in addresses:
        reason = address_block_reason(ipaddress.ip_address(text.split("%", 1)[0]), allow_private=allow_private)
        if reason:
            shown = host if host == text else f"{host} ({text})"
            raise DestinationBlocked(f"Delivery to {shown} is blocked: it is {reason}. {_hint(reason)}")
    return addresses


def _hint(reason: str) -> str:
    if "metadata" in reason:
        return f"Cloud metadata addresses are never allowed, not even with {ALLOW_SETTING}."
    if "link-local" in reason:
        return f"Link-local addresses (cloud credential services) are never allowed, not even with {ALLOW_SETTING}."
    return f"Set {ALLOW_SETTING} to allow private destinations."


def url_destination_check(url: str, *, allow_private: bool) -> None:
    """Refuse a URL whose scheme is not http(s) or whose host resolves to a forbidden address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DestinationBlocked(f"Only http and https URLs can receive deliveries, not '{parts.scheme}'.")
    if not parts.hostname:
        raise DestinationBlocked("The URL has no host.")
    if url_has_credentials(url):
        raise CredentialsInUrl("Credentials in the URL are not allowed; use the subscription's parameters.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DestinationBlocked("The URL's port is not valid.") from None
    if allow_private:
        # No DNS here: a private name may only resolve on the hub's network.
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return
        reason = address_block_reason(literal, allow_private=True)
        if reason:
            raise DestinationBlocked(f"Delivery to {parts.hostname} is blocked: it is {reason}. {_hint(reason)}")
        return
    host_addresses_checked(parts.hostname, port)


class _GuardedConnectionMixin:
    """Resolves, checks, and connects to the checked address; TLS still verifies the host name."""

    guard_allow_private: Callable[[], bool]
    _dns_host: str
    host: str
    port: int

    def _new_conn(self) -> socket.socket:
        addresses = host_addresses_checked(self._dns_host, self.port, allow_private=self.guard_allow_private())
        name = self._dns_host
        last_error: Exception | None = None
        try:
            for address in addresses:
                # urllib3 dials _dns_host while SNI and certificate checks use self.host, so pinning
                # the dial to the checked address leaves TLS verification of the name intact.
                self._dns_host = address
                try:
                    return super()._new_conn()  # type: ignore[misc]
                except (NewConnectionError, ConnectTimeoutError) as exc:
                    last_error = exc
        finally:
            self._dns_host = name
        assert last_error is not None  # getaddrinfo never returns an empty list without raising
        raise last_error


def _blocked_in(exc: BaseException) -> DestinationBlocked | None:
    """urllib3 wraps a connection error in several layers; find the guard's own error inside."""
    pending: list[Any] = [exc]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, DestinationBlocked):
            return item
        pending.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return None


class GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose every new connection goes through the guard; allow_private=None reads the setting."""

    def __init__(self, *args: Any, allow_private: bool | None = None, **kwargs: Any) -> None:
        self.allow_private = allow_private
        # send_plain's connection pool of each URL; a pool the manager evicted is closed, and found again.
        self._plain_pools: dict[tuple[str, Any, Any], HTTPConnectionPool] = {}
        super().__init__(*args, **kwargs)

    def guard_allow_private(self) -> bool:
        if self.allow_private is not None:
            return self.allow_private
        from django.conf import settings

        return bool(getattr(settings, ALLOW_SETTING, False))

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        attrs = {"guard_allow_private": staticmethod(self.guard_allow_private)}
        bases = (_GuardedConnectionMixin, DeadlineConnectionMixin, KeptConnectionMixin)
        http_conn = type("GuardedHTTPConnection", (*bases, HTTPConnection), attrs)
        https_conn = type("GuardedHTTPSConnection", (*bases, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "allow_private": self.allow_private}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._plain_pools = {}
        super().__setstate__(state)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if url_has_credentials(request.url or ""):
            # A URL stored past the form's check (a migration, a fixture, a queryset update).
            raise CredentialsInUrl(
                "Credentials in the URL are not allowed: nothing was sent, and the delivery is not retried. "
                "Remove them from the subscription's URL (an endpoint takes them as parameters).",
                request=request,
            )
        proxies = kwargs.get("proxies") or {}
        if proxies and select_proxy(request.url or "", proxies) and not self.guard_allow_private():
            # Through a proxy the proxy resolves the name, so the guard could not see the address.
            raise DestinationBlocked(
                "Deliveries through an HTTP proxy are refused while the private-destination guard is on."
            )
        try:
            return super().send(request, *args, **kwargs)
        except requests.exceptions.ConnectionError as exc:
            blocked = _blocked_in(exc)
            if blocked is not None:
                raise type(blocked)(str(blocked), request=request) from None
            raise

    def send_plain(
        self,
        request: requests.PreparedRequest,
        *,
        timeout: float,
        verify: Any = True,
        cert: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response | KeptReply:
        """What `send(request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies={})`
        does, with less work per request: the URL's connection pool and path are looked up once,
        not parsed again each time, and an open keep-alive connection is used by http.client itself
        (routing.transport.kept), which returns a KeptReply in place of a Response. The same guard
        (credentials, every new connection resolved and checked), the same urllib3 call with the
        same arguments for a new connection, requests' exceptions for urllib3's as HTTPAdapter.send
        raises them. `headers`: request.headers as a plain dict in the same order, which urllib3
        reads faster."""
        url = request.url or ""
        if url_has_credentials(url):
            raise CredentialsInUrl(
                "Credentials in the URL are not allowed: nothing was sent, and the delivery is not retried. "
                "Remove them from the subscription's URL (an endpoint takes them as parameters).",
                request=request,
            )
        try:
            return self._plain_send(
                request, url, timeout=timeout, verify=verify, cert=cert, headers=headers or request.headers
            )
        except requests.exceptions.ConnectionError as exc:
            blocked = _blocked_in(exc)
            if blocked is not None:
                raise type(blocked)(str(blocked), request=request) from None
            raise

    def _plain_send(
        self,
        request: requests.PreparedRequest,
        url: str,
        *,
        timeout: float,
        verify: Any,
        cert: Any,
        headers: Mapping[str, str],
    ) -> requests.Response | KeptReply:
        key = (url, verify, cert)
        pool = self._plain_pools.get(key)
        if pool is None or pool.pool is None:
            try:
                pool = self.get_connection_with_tls_context(request, verify, proxies={}, cert=cert)
            except LocationValueError as e:
                raise InvalidURL(e, request=request) from e
            if len(self._plain_pools) >= 1024:
                self._plain_pools.clear()
            self._plain_pools[key] = pool
        self.cert_verify(pool, url, verify, cert)
        # HTTPAdapter.send's except clauses, in its order: the same exception for the same failure.
        try:
            conn = pool._get_conn() if kept_usable(headers) else None
            if conn is not None and conn.sock is not None:
                # An open keep-alive connection: the exchange without urlopen (routing.transport.kept).
                return kept_exchange(
                    pool,
                    conn,
                    method=request.method or "",
                    path=_target(url),
                    headers=headers,
                    body=request.body,  # type: ignore[arg-type]
                    timeout=timeout,
                    retries=self.max_retries,
                )
            if conn is not None:
                # A new (or dropped) connection: urlopen takes it from the pool again and connects it.
                pool._put_conn(conn)
            response = pool.urlopen(
                method=request.method,
                url=_path_url(url),
                body=request.body,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=self.max_retries,
                timeout=TimeoutSauce(connect=timeout, read=timeout),
                chunked=False,
            )
        except (ProtocolError, OSError) as err:
            raise requests.ConnectionError(err, request=request) from err
        except MaxRetryError as e:
            if isinstance(e.reason, ConnectTimeoutError) and not isinstance(e.reason, NewConnectionError):
                raise ConnectTimeout(e, request=request) from e
            if isinstance(e.reason, ResponseError):
                raise RetryError(e, request=request) from e
            if isinstance(e.reason, Urllib3ProxyError):
                raise ProxyError(e, request=request) from e
            if isinstance(e.reason, Urllib3SSLError):
                raise SSLError(e, request=request) from e
            raise requests.ConnectionError(e, request=request) from e
        except ClosedPoolError as e:
            raise requests.ConnectionError(e, request=request) from e
        except Urllib3ProxyError as e:
            raise ProxyError(e) from e
        except (Urllib3SSLError, Urllib3HTTPError) as e:
            if isinstance(e, Urllib3SSLError):
                raise SSLError(e, request=request) from e
            if isinstance(e, ReadTimeoutError):
                raise ReadTimeout(e, request=request) from e
            if isinstance(e, Urllib3InvalidHeader):
                raise InvalidHeader(e, request=request) from e
            raise
        return self._response_plain(request, response)

    def _response_plain(self, request: requests.PreparedRequest, raw: Any) -> requests.Response:
        """build_response's Response, but for the reply's cookies in `response.cookies`: no caller of
        send_plain reads them (a session that keeps cookies is handed its own by the caller)."""
        response = requests.Response()
        response.status_code = raw.status
        response.headers = CaseInsensitiveDict(raw.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = raw
        response.reason = raw.reason
        response.url = request.url or ""
        response.request = request
        response.connection = self
        return response


@functools.lru_cache(maxsize=1024)
def _path_url(url: str) -> str:
    """requests' PreparedRequest.path_url of a prepared URL: its path (at least `/`) and query."""
    parts = urlsplit(url)
    return (parts.path or "/") + ("?" + parts.query if parts.query else "")


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> str:
    """The request target urlopen writes for _path_url(url)."""
    return _encode_target(_path_url(url))


def _no_redirect_target(response: requests.Response) -> None:
    return None


def session_guard(
    session: requests.Session, *, allow_private: bool | None = None, **adapter_options: Any
) -> requests.Session:
    """Mount the guard on both schemes and follow no redirects (a 3xx is the endpoint's answer)."""
    adapter = GuardedAdapter(allow_private=allow_private, **adapter_options)
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    session.max_redirects = 0
    session.get_redirect_target = _no_redirect_target  # type: ignore[method-assign]
    return session


def subscription_url_validate(url: str) -> None:
    """Django validator for subscription URLs: the rule deliveries follow, told at save time."""
    from django.conf import settings
    from django.core.exceptions import ValidationError

    try:
        url_destination_check(url, allow_private=bool(getattr(settings, ALLOW_SETTING, False)))
    except DestinationBlocked as exc:
        raise ValidationError(str(exc), code="destination_blocked") from None
