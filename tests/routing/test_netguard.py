import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from routing.transport import netguard
from routing.transport.netguard import DestinationBlocked, address_block_reason, session_guard, url_destination_check


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:7f00:1::", "loopback"),
    ],
)
def test_forbidden_addresses_are_named_for_what_they_are(address, reason):
    assert reason in (address_block_reason(ipaddress.ip_address(address)) or "")


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert address_block_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost:8000/hook", "loopback"),
        ("http://127.0.0.1/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 spelt as one number
        ("http://0x7f.1/", "loopback"),
        ("http://0.0.0.0:8000/", "unspecified"),
        ("http://10.0.0.5/", "private"),
    ],
)
def test_urls_resolving_to_forbidden_addresses_are_refused(url, reason):
    with pytest.raises(DestinationBlocked) as caught:
        url_destination_check(url, allow_private=False)
    assert reason in str(caught.value)
    assert "HUB_ALLOW_PRIVATE_DESTINATIONS" in str(caught.value)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x/", "http:///nohost"])
def test_only_http_urls_with_a_host_are_accepted(url):
    with pytest.raises(DestinationBlocked):
        url_destination_check(url, allow_private=True)


@pytest.mark.parametrize("userinfo", ["user:pw@", "user@", ":pw@", "@", "93.184.215.14@"])
def test_credentials_in_a_url_are_refused(userinfo):
    with pytest.raises(DestinationBlocked, match="Credentials"):
        url_destination_check(f"https://{userinfo}93.184.215.14/", allow_private=False)


def test_a_public_ip_url_passes_and_allow_private_lets_loopback_pass():
    url_destination_check("https://93.184.215.14/hook", allow_private=False)
    url_destination_check("http://127.0.0.1:8000/hook", allow_private=True)


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.hits.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_guarded_session_refuses_to_connect_to_loopback(local_server):
    session = session_guard(requests.Session(), allow_private=False)
    port = local_server.server_address[1]
    with pytest.raises(DestinationBlocked, match="loopback"):
        session.get(f"http://127.0.0.1:{port}/hook", timeout=5)
    with pytest.raises(DestinationBlocked, match="loopback"):
        session.get(f"http://localhost:{port}/hook", timeout=5)
    assert local_server.hits == []


def test_a_blocked_connection_is_a_requests_connection_error(local_server):
    session = session_guard(requests.Session(), allow_private=False)
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{local_server.server_address[1]}/", timeout=5)


def test_the_guard_follows_the_setting_when_not_told(local_server, settings):
    session = session_guard(requests.Session())
    url = f"http://127.0.0.1:{local_server.server_address[1]}/hook"
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = True
    assert session.get(url, timeout=5).json() == {"ok": True}
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = False
    # A fresh connection is checked again; close the pooled one so the next request dials anew.
    session.close()
    with pytest.raises(DestinationBlocked):
        session.get(url, timeout=5)
    assert local_server.hits == ["/hook"]


def test_dns_rebinding_is_caught_at_connection_time(local_server, monkeypatch):
    """The name resolves to a public address when the URL is checked and to 127.0.0.1 when the
    delivery connects: the connection-time check refuses it."""
    real = socket.getaddrinfo
    answers = iter(["93.184.215.14", "127.0.0.1", "127.0.0.1"])

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.example":
            return real(next(answers), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(netguard.socket, "getaddrinfo", rebinding)
    url = f"http://rebind.example:{local_server.server_address[1]}/hook"
    url_destination_check(url, allow_private=False)  # looks public when saved
    session = session_guard(requests.Session(), allow_private=False)
    with pytest.raises(DestinationBlocked, match=r"rebind\.example \(127\.0\.0\.1\).*loopback"):
        session.get(url, timeout=5)
    assert local_server.hits == []


def test_redirects_are_not_followed(local_server):
    session = session_guard(requests.Session(), allow_private=True)
    response = session.get(f"http://127.0.0.1:{local_server.server_address[1]}/redirect", timeout=5)
    assert response.status_code == 302
    assert response.history == []
    assert local_server.hits == ["/redirect"]


def test_deliveries_through_a_proxy_are_refused_while_the_guard_is_on(local_server):
    session = session_guard(requests.Session(), allow_private=False)
    proxies = {"http": f"http://127.0.0.1:{local_server.server_address[1]}"}
    with pytest.raises(DestinationBlocked, match="proxy"):
        session.get("http://93.184.215.14/hook", timeout=5, proxies=proxies)
    assert local_server.hits == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/hook", "http://169.254.169.254/latest/meta-data/"])
def test_the_subscription_url_validator_refuses_forbidden_destinations(url, settings):
    from django.core.exceptions import ValidationError

    from routing.transport.netguard import subscription_url_validate

    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = False
    with pytest.raises(ValidationError) as caught:
        subscription_url_validate(url)
    assert caught.value.code == "destination_blocked"
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = True
    if "169.254.169.254" in url:
        # Allowing private destinations never opens the metadata service.
        with pytest.raises(ValidationError, match="never allowed"):
            subscription_url_validate(url)
    else:
        subscription_url_validate(url)


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/", "http://[fd00:ec2::254]/"],
)
def test_metadata_addresses_stay_refused_when_private_destinations_are_allowed(url):
    with pytest.raises(DestinationBlocked, match="metadata.*never allowed"):
        url_destination_check(url, allow_private=True)
    session = session_guard(requests.Session(), allow_private=True)
    with pytest.raises(DestinationBlocked, match="metadata.*never allowed"):
        session.get(url, timeout=5)


def test_allowing_private_destinations_skips_dns_when_a_url_is_saved():
    # A name that only resolves on the hub's own network (or not yet) can be saved.
    url_destination_check("http://erp.internal.invalid/hook", allow_private=True)


# Never reachable, whatever HUB_ALLOW_PRIVATE_DESTINATIONS says: link-local, where instance metadata
# and credential agents live (169.254.170.23 and fd00:ec2::23: EKS Pod Identity), and the named
# metadata addresses, also written inside an IPv6 address that reaches the IPv4 one.
NEVER_ALLOWED = [
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("169.254.170.23", "metadata"),
    ("100.100.100.200", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("fd00:ec2::23", "metadata"),
    ("169.254.0.1", "link-local"),
    ("169.254.1.1", "link-local"),
    ("169.254.255.254", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::a9fe:a9fe", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("::ffff:169.254.169.254", "metadata"),  # IPv4-mapped
    ("::ffff:169.254.170.23", "metadata"),
    ("::ffff:169.254.1.1", "link-local"),
    ("::169.254.169.254", "metadata"),  # IPv4-compatible (deprecated)
    ("::169.254.1.1", "link-local"),
    ("::ffff:0:169.254.169.254", "metadata"),  # IPv4-translated (SIIT)
    ("::ffff:0:169.254.1.1", "link-local"),
    ("64:ff9b::169.254.169.254", "metadata"),  # NAT64, well-known prefix
    ("64:ff9b::169.254.170.23", "metadata"),
    ("64:ff9b::169.254.1.1", "link-local"),
    ("64:ff9b:1::169.254.169.254", "metadata"),  # NAT64, local-use prefix
    ("64:ff9b:1::169.254.1.1", "link-local"),
    ("2002:a9fe:a9fe::", "metadata"),  # 6to4
    ("2002:a9fe:101::", "link-local"),
    ("2001:0:4136:e378:8000:0:5601:5601", "metadata"),  # Teredo, client 169.254.169.254
]


@pytest.mark.parametrize("allow_private", [False, True], ids=["guard-on", "private-allowed"])
@pytest.mark.parametrize(("address", "reason"), NEVER_ALLOWED)
def test_link_local_and_metadata_addresses_are_refused_whatever_the_setting(address, reason, allow_private):
    got = address_block_reason(ipaddress.ip_address(address), allow_private=allow_private)
    assert got is not None and reason in got


@pytest.mark.parametrize("allow_private", [False, True], ids=["guard-on", "private-allowed"])
@pytest.mark.parametrize(
    "host",
    ["169.254.170.23", "169.254.1.1", "[fd00:ec2::23]", "[fe80::1]", "[::ffff:169.254.170.23]", "[::169.254.1.1]"],
)
def test_link_local_and_metadata_urls_are_refused_when_saved_and_when_sent(host, allow_private):
    url = f"http://{host}/v1/credentials"
    with pytest.raises(DestinationBlocked, match="never allowed"):
        url_destination_check(url, allow_private=allow_private)
    # Refused before any connection is dialled: nothing reaches the network.
    session = session_guard(requests.Session(), allow_private=allow_private)
    with pytest.raises(DestinationBlocked, match="never allowed"):
        session.get(url, timeout=5)


@pytest.mark.parametrize("address", ["fec0::1", "fec0::a9fe:a9fe", "feff:ffff:ffff:ffff::1"])
def test_deprecated_site_local_addresses_are_refused_while_the_guard_is_on(address):
    ip = ipaddress.ip_address(address)
    assert "site-local" in (address_block_reason(ip, allow_private=False) or "")
    with pytest.raises(DestinationBlocked, match="site-local"):
        url_destination_check(f"http://[{address}]/hook", allow_private=False)
    # A private address like any other once private destinations are allowed.
    assert address_block_reason(ip, allow_private=True) is None


@pytest.mark.parametrize(
    "address", ["10.1.2.3", "fc00::1", "fd00:ec2::1", "100.64.0.1", "127.0.0.1", "::ffff:10.0.0.1"]
)
def test_private_addresses_pass_when_allowed(address):
    assert address_block_reason(ipaddress.ip_address(address), allow_private=True) is None


@pytest.mark.parametrize("allow_private", [False, True], ids=["guard-on", "private-allowed"])
@pytest.mark.parametrize("userinfo", ["user:pw-s3cret@", "user@", ":pw-s3cret@"])
def test_the_guarded_session_refuses_credentials_in_the_url_before_connecting(local_server, allow_private, userinfo):
    """A URL stored without the form's check still has its credentials refused at send time:
    requests would turn them into an Authorization header for whoever answers."""
    session = session_guard(requests.Session(), allow_private=allow_private)
    with pytest.raises(DestinationBlocked, match="Credentials in the URL") as caught:
        session.get(f"http://{userinfo}127.0.0.1:{local_server.server_address[1]}/hook", timeout=5)
    assert caught.value.permanent is True
    assert "s3cret" not in str(caught.value) and "user" not in str(caught.value)
    assert local_server.hits == []
