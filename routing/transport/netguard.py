"""The outbound SSRF guard: deliveries never reach the hub's own network unless allowed.

A subscription URL is an address anyone with admin access (or a compromised store integration)
can aim at the hub's neighbours: the cloud metadata service, a database on localhost, the admin of
a router. So every connection the delivery session opens resolves the host itself, refuses if any
address is loopback, private, link-local, carrier-grade NAT, multicast, unspecified, reserved or a
metadata address, and then connects to exactly the address it checked. Checking at connection
time (not only when the URL is saved) is what defeats DNS rebinding: a name that resolved to a
public address yesterday and to 127.0.0.1 now is refused now.

HUB_ALLOW_PRIVATE_DESTINATIONS lets deliveries reach private addresses (subscribers on the hub's
own private network, the tests' local subscriber); link-local and cloud metadata addresses stay
refused even then, and so do credentials written in a URL, which requests would send as an
Authorization header to whoever answers.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from routing.transport.deadline import DeadlineConnectionMixin

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata and credential services: AWS/GCP/Azure/OpenStack (IPv4 and AWS's IPv6), AWS ECS
# task metadata, EKS Pod Identity (IPv4 and IPv6), Alibaba Cloud. Most are link-local, which is
# refused whole anyway; naming them gives a clearer error, and catches the two that are not.
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
# IPv6 forms that reach an IPv4 host given in their last 32 bits: NAT64 (well-known and local-use
# prefixes, RFC 6052 / RFC 8215), IPv4-translated (SIIT, RFC 2765) and IPv4-compatible (deprecated;
# :: and ::1 excepted, which are themselves).
EMBEDDING_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96")
)

ALLOW_SETTING = "HUB_ALLOW_PRIVATE_DESTINATIONS"


class DestinationBlocked(requests.exceptions.ConnectionError):
    """A delivery (or a subscription URL) aimed at an address the guard forbids.

    A ConnectionError, so that code handling failed connections records it as a failed attempt.
    """

    # A refusal that trying again cannot change: the delivery fails at once instead of retrying.
    permanent: bool = False


class HostUnresolvable(DestinationBlocked):
    """The host has no address to check (and so none to connect to)."""


class CredentialsInUrl(DestinationBlocked):
    """user:password in a URL: requests would send it as an Authorization header. Only an admin's
    edit of the URL changes that, so the delivery is not retried."""

    permanent = True


def url_has_credentials(url: str) -> bool:
    """Any userinfo (`user:pw@`, `user@`, `:pw@`, even an empty `@`) before the host."""
    return "@" in urlsplit(url).netloc


def address_block_reason(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why an address is off limits for deliveries, or None when it is a public address.

    With allow_private, only link-local and cloud metadata addresses are off limits: a hub allowed
    to reach subscribers on its own network still has no business reading its instance's
    credentials, which cloud agents serve on link-local addresses (not only the named ones).
    """
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
    """The addresses to connect to; DestinationBlocked if any of them is forbidden.

    One forbidden address refuses the whole name: a name that resolves to a public and a private
    address at once is either misconfigured or an attack, and picking the public one would make
    the outcome depend on the resolver's order.
    """
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
        # No DNS here: a private name may only resolve on the hub's network. A metadata address
        # written out is refused now; one behind a name is refused when the delivery connects.
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
    """An HTTPAdapter whose every new connection goes through the guard.

    allow_private=None reads settings.HUB_ALLOW_PRIVATE_DESTINATIONS at each connection, so a
    long-lived session follows the setting.
    """

    def __init__(self, *args: Any, allow_private: bool | None = None, **kwargs: Any) -> None:
        self.allow_private = allow_private
        super().__init__(*args, **kwargs)

    def guard_allow_private(self) -> bool:
        if self.allow_private is not None:
            return self.allow_private
        from django.conf import settings

        return bool(getattr(settings, ALLOW_SETTING, False))

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        attrs = {"guard_allow_private": staticmethod(self.guard_allow_private)}
        # The guard picks each address to dial; the deadline (routing.transport.deadline) bounds each dial
        # by the time left and cuts the exchange when it is up.
        bases = (_GuardedConnectionMixin, DeadlineConnectionMixin)
        http_conn = type("GuardedHTTPConnection", (*bases, HTTPConnection), attrs)
        https_conn = type("GuardedHTTPSConnection", (*bases, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "allow_private": self.allow_private}

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


def _no_redirect_target(response: requests.Response) -> None:
    return None


def session_guard(
    session: requests.Session, *, allow_private: bool | None = None, **adapter_options: Any
) -> requests.Session:
    """Mount the guard on both schemes and follow no redirects (a 3xx is the endpoint's answer).

    A redirect could point anywhere, including where the guard would refuse; refusing to follow
    any keeps the rule simple and each attempt's record true to what the endpoint said.
    `adapter_options` go to the HTTPAdapter (pool sizes, max_retries).
    """
    adapter = GuardedAdapter(allow_private=allow_private, **adapter_options)
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    session.max_redirects = 0
    session.get_redirect_target = _no_redirect_target  # type: ignore[method-assign]
    return session


def subscription_url_validate(url: str) -> None:
    """Django validator for subscription URLs: the same rule deliveries follow, told at save time.

    Deliveries are checked again on every connection, so a name that changes its answer later
    is still refused then.
    """
    from django.conf import settings
    from django.core.exceptions import ValidationError

    try:
        url_destination_check(url, allow_private=bool(getattr(settings, ALLOW_SETTING, False)))
    except DestinationBlocked as exc:
        raise ValidationError(str(exc), code="destination_blocked") from None
