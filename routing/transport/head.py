"""A request's head on a kept connection (routing.transport.kept), written as one string instead of
through http.client's putrequest, a putheader per line and endheaders, whose per-line checks and
encodings cost more CPU than the rest of the send.

The same bytes (tests/routing/test_transport_head.py compares them with http.client's), and the
same refusals: anything the short way cannot vouch for (a name or value http.client's own checks
refuse, bytes, an IDNA host, a connection not idle) goes back to http.client's calls, which raise
what they always raised.
"""

from __future__ import annotations

import functools
import http.client
from collections.abc import Mapping, Set
from typing import Any

from urllib3.connection import _CONTAINS_CONTROL_CHAR_RE, _get_default_user_agent

_CS_IDLE: str = http.client._CS_IDLE  # type: ignore[attr-defined]
_CS_REQ_SENT: str = http.client._CS_REQ_SENT  # type: ignore[attr-defined]
_is_legal_header_name = http.client._is_legal_header_name  # type: ignore[attr-defined]
_is_illegal_header_value = http.client._is_illegal_header_value  # type: ignore[attr-defined]
_url_refused = http.client._contains_disallowed_url_pchar_re.search  # type: ignore[attr-defined]
_strip_ipv6_iface = http.client._strip_ipv6_iface  # type: ignore[attr-defined]


def head_write(conn: Any, method: str, path: str, headers: Mapping[str, str], keys: Set[str]) -> bool:
    """Send the head `conn.putrequest(method, path, ...)`, the putheader calls and `endheaders()`
    of kept_exchange would send (`keys`: the headers' lower-case names), leaving the connection
    in the state they leave it in (request sent, its method kept for the reply). False, with
    nothing written or changed, when that is not certain: the caller then makes those calls."""
    head = _head(conn, method, path, headers, keys)
    if head is None:
        return False
    # putrequest's bookkeeping: a finished previous reply forgotten, the method for reading the
    # reply; then endheaders' state, set before its write as endheaders sets it.
    previous = conn._HTTPConnection__response
    if previous and previous.isclosed():
        conn._HTTPConnection__response = None
    conn._method = method
    conn._HTTPConnection__state = _CS_REQ_SENT
    conn.send(head)
    return True


def _head(conn: Any, method: str, path: str, headers: Mapping[str, str], keys: Set[str]) -> bytes | None:
    if conn._HTTPConnection__state != _CS_IDLE or conn._buffer or conn._http_vsn != 11:
        return None
    start = _request_line(method, path, conn._http_vsn_str)
    if start is None:
        return None
    lines = [start]
    if "host" not in keys:
        host = _host_line(conn)
        if host is None:
            return None
        lines.append(host)
    if "accept-encoding" not in keys:
        lines.append("Accept-Encoding: identity")
    if "user-agent" not in keys:
        lines.append("User-Agent: " + _get_default_user_agent())
    for line in headers.items():
        name, value = line
        # Most of a delivery's header lines are the same each time (its id, time and signature
        # change): a line found legal once is legal again, not scanned character by character
        # (~16 k instructions less a request of 12 lines).
        plain = type(name) is str and type(value) is str
        if not (plain and line in _LINES_LEGAL):
            if not _line_legal(name, value):
                return None
            if plain:
                if len(_LINES_LEGAL) >= _LINES_LEGAL_MAX:
                    _LINES_LEGAL.clear()
                _LINES_LEGAL.add(line)
        lines.append(name + ": " + value)
    lines += ("", "")
    # Names, the request line and Host are ASCII, values latin-1 (checked): encoding the whole is
    # encoding each part as putheader does.
    return "\r\n".join(lines).encode("latin-1")


# (name, value) lines _line_legal passed, both str: bounded, cleared when full.
_LINES_LEGAL: set[tuple[str, str]] = set()
_LINES_LEGAL_MAX = 4096


def _line_legal(name: Any, value: Any) -> bool:
    """putheader's checks of a name and value given as str: the name ASCII and legal, the value
    latin-1 without a bare line break."""
    if type(name) is not str or type(value) is not str:
        return False
    # Printable ASCII, no colon in the name nor a space first: what those checks pass, found by
    # C calls alone.
    if name.isascii() and name.isprintable() and value.isascii() and value.isprintable():
        if ":" not in name and name[:1] not in ("", " "):
            return True
    try:
        name_bytes, value_bytes = name.encode("ascii"), value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return _is_legal_header_name(name_bytes) is not None and _is_illegal_header_value(value_bytes) is None


@functools.lru_cache(maxsize=256)
def _request_line(method: str, path: str, version: str) -> str | None:
    """putrequest's first line, once per method and target (urllib3's and http.client's checks of
    both, ASCII); None for what either would refuse, or a target from which putrequest takes the
    Host (an absolute URL)."""
    if type(method) is not str or type(path) is not str or not path or path.startswith("http"):
        return None
    if _CONTAINS_CONTROL_CHAR_RE.search(method) or _url_refused(path):
        return None
    line = f"{method} {path} {version}"
    return line if line.isascii() else None


def _host_line(conn: Any) -> str | None:
    """putrequest's Host line for a target that is a path: the tunnel's host or the connection's,
    an IPv6 address in brackets without its zone, the port unless it is the default."""
    if conn._tunnel_host:
        host, port = conn._tunnel_host, conn._tunnel_port
    else:
        host, port = conn.host, conn.port
    if type(host) is not str or not host.isascii() or type(port) is not int:
        return None  # IDNA, as http.client encodes it, and the unusual: left to it
    if ":" in host:
        host = _strip_ipv6_iface(b"[" + host.encode("ascii") + b"]").decode("ascii")
    value = host if port == conn.default_port else f"{host}:{port}"
    return "Host: " + value if _line_legal("Host", value) else None
