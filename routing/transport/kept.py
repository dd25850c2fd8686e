"""One exchange on a kept-alive connection with http.client itself, skipping urllib3's urlopen and
its response objects, which cost more CPU than the exchange (bench.transport).

Only for a connection that is already open: a new one (resolving, the SSRF guard, TLS) goes
through urlopen. Each failure is turned into the exception urlopen and urllib3's response would
raise for it, so requests' mapping, and every error text, is the same on either path.
"""

from __future__ import annotations

import email.parser
import errno
import http.client
import re
import sys
import types
from collections.abc import Iterator, Mapping
from ssl import SSLError as BaseSSLError
from typing import Any

import requests
from urllib3 import HTTPResponse
from urllib3._collections import HTTPHeaderDict
from urllib3.connection import _get_default_user_agent, _normalize_header_values
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import DecodeError, IncompleteRead, ProtocolError, ReadTimeoutError, SSLError
from urllib3.util import SKIP_HEADER
from urllib3.util.retry import Retry

from routing.transport.deadline import watch_current
from routing.transport.gate import gate_written
from routing.transport.head import head_write

_HTTPConnection = http.client.HTTPConnection


def kept_usable(headers: Mapping[str, str]) -> bool:
    """Headers this path writes as urllib3 would: Content-Length given, no urllib3 sentinel."""
    return "Content-Length" in headers and SKIP_HEADER not in headers.values()


def kept_exchange(
    pool: HTTPConnectionPool,
    conn: Any,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    timeout: float,
    retries: Retry,
) -> KeptReply:
    """Send on `conn` (from pool._get_conn, its socket open) and read the status and headers.

    The same bytes as urllib3's HTTPConnection.request (Host, then the headers in order, with the
    request's own User-Agent and Accept-Encoding), in one write instead of two, the head written
    by routing.transport.head. Raises what urlopen raises for the same failure; the connection is
    then closed and its slot returned."""
    pool.num_requests += 1
    watch = watch_current()
    if watch is not None and not watch.watching():
        watch.attach(conn.sock)
    conn.timeout = timeout
    try:
        try:
            conn.sock.settimeout(timeout)
            keys = {k.lower() for k in headers}
            # Head and body in one write (KeptConnectionMixin.send): one loopback or network
            # round of the kernel's, not two.
            conn.kept_body = body
            if not head_write(conn, method, path, headers, keys):
                # What head_write cannot vouch for: http.client's own calls, and their refusals.
                conn.putrequest(method, path, skip_accept_encoding="accept-encoding" in keys, skip_host="host" in keys)
                if "user-agent" not in keys:
                    conn.putheader("User-Agent", _get_default_user_agent())
                for name, value in headers.items():
                    _HTTPConnection.putheader(conn, name, value)
                conn.endheaders()
        except BrokenPipeError:
            # As urllib3: the endpoint may have answered and closed; its reply is still readable.
            pass
        except OSError as e:
            if e.errno != errno.EPROTOTYPE and e.errno != errno.ECONNRESET:
                raise
        gate_written()
        try:
            raw = _HTTPConnection.getresponse(conn)
        except (BaseSSLError, OSError) as e:
            pool._raise_timeout(err=e, url=path, timeout_value=timeout)
            raise
    except (ReadTimeoutError, http.client.HTTPException, OSError, BaseSSLError) as e:
        conn.kept_body = None
        conn.close()
        pool._put_conn(None)
        # urlopen's except clause: the same wrapping, then Retry(0, read=False) raises it.
        new_e: Exception = e
        if isinstance(e, BaseSSLError):
            new_e = SSLError(e)
        elif isinstance(e, (OSError, http.client.HTTPException)):
            new_e = ProtocolError("Connection aborted.", e)
        retries.increment(method, path, error=new_e, _pool=pool, _stacktrace=sys.exc_info()[2])
        raise  # increment raises for every error with read=False; this is for the type checker
    except BaseException:
        conn.kept_body = None
        # A header http.client refuses (ValueError) and the like: urlopen discards the connection.
        conn.close()
        pool._put_conn(None)
        raise
    return KeptReply(pool, conn, raw, method, path)


# A header line the email parser takes as `name: value` and nothing else: a name of the characters
# its headerRE allows, a value of printable ASCII and tabs (no line break of any kind, which its
# splitlines would see), nothing on the next line that continues it.
_HEADER_PLAIN = re.compile(rb"[!-9;-~]+:[\t -~]*\r?\n\Z")


def headers_parse(fp: Any) -> http.client.HTTPMessage:
    """http.client.parse_headers, the same HTTPMessage, without the email parser for a reply whose
    header lines are all plain (_HEADER_PLAIN), which costs more than the rest of the reply's
    reading. Anything else (a folded line, a name the parser refuses, a multipart or message
    Content-Type, whose empty body it parses) goes to the parser as before. The lines are read by
    http.client's own _read_headers, with its limits and error texts."""
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]
    if lines[-1] in (b"\r\n", b"\n") and all(_HEADER_PLAIN.match(line) for line in lines[:-1]):
        message = http.client.HTTPMessage()
        for line in lines[:-1]:
            name, _, value = line.decode("ascii").partition(":")
            # compat32's header_source_parse: spaces and tabs before the value go, the line break too.
            message.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
        message.set_payload("")
        content_type = message.get("content-type", "").lower()
        if "multipart" not in content_type and "message" not in content_type:
            return message
    text = b"".join(lines).decode("iso-8859-1")
    return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)


class KeptHTTPResponse(http.client.HTTPResponse):
    """http.client's response reading its headers with headers_parse: its own begin(), the same
    code, with parse_headers bound to headers_parse."""

    begin = types.FunctionType(
        http.client.HTTPResponse.begin.__code__,
        {**vars(http.client), "parse_headers": headers_parse},
        "begin",
    )


class KeptConnectionMixin:
    """For the guarded connection classes: http.client writes the head, then the body; with
    `kept_body` set, the body goes out in the head's write. Replies are read as KeptHTTPResponse,
    in a fan-out once its other requests are written (routing.transport.gate), on urllib3's path
    (a new connection) as on kept_exchange's."""

    kept_body: bytes | None = None
    response_class = KeptHTTPResponse

    def send(self, data: Any) -> None:
        body, self.kept_body = self.kept_body, None
        super().send(data + body if body is not None else data)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        gate_written()
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class KeptReply:
    """The parts of requests' Response that request_send reads: status_code, headers (lower-case
    names, repeated ones joined as urllib3 joins them), iter_content, raw.close and `with`."""

    def __init__(self, pool: HTTPConnectionPool, conn: Any, raw: http.client.HTTPResponse, method: str, path: str):
        self.status_code = raw.status
        self.raw = self
        self._original_response = raw
        self._pool = pool
        self._conn: Any = conn
        self._method = method
        self._path = path
        # The urllib3 response a chunked or encoded body is read through; whether the body was read to its end.
        self._urllib3: HTTPResponse | None = None
        self.consumed = False
        merged: dict[str, str] = {}
        for name, value in _normalize_header_values(raw.msg):
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        self.headers = merged

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        """requests' iter_content over what urllib3's stream would give, with its exceptions."""
        raw = self._original_response
        if raw.chunked or raw.length is None or self.headers.get("content-encoding", "identity") != "identity":
            # urllib3 reads chunks and decodes gzip itself (and fails in its own words): let it.
            self._urllib3 = self._urllib3_response()
            return _requests_errors(self, self._urllib3.stream(chunk_size, decode_content=True))
        return _requests_errors(self, self._read_sized(chunk_size))

    def _read_sized(self, chunk_size: int) -> Iterator[bytes]:
        """A body of known length read as urllib3's _raw_read reads it, its errors as its _error_catcher's."""
        raw = self._original_response
        done = 0
        try:
            while raw.length:
                try:
                    data = raw.read(min(chunk_size, raw.length))
                    if not data:
                        raise IncompleteRead(done, raw.length)
                except TimeoutError as e:
                    raise ReadTimeoutError(self._pool, None, "Read timed out.") from e  # type: ignore[arg-type]
                except BaseSSLError as e:
                    raise SSLError(e) from e
                except IncompleteRead as e:
                    raise ProtocolError(f"Connection broken: {e!r}", e) from e
                except (http.client.HTTPException, OSError) as e:
                    raise ProtocolError(f"Connection broken: {e!r}", e) from e
                done += len(data)
                yield data
        except BaseException:
            self._discard()
            raise
        # http.client closes a response at its last byte, but one of no length only when read: the
        # connection takes its next request only once its last response is closed.
        raw.close()
        self._release()

    def _urllib3_response(self) -> HTTPResponse:
        """The HTTPResponse urllib3's HTTPConnection.getresponse would have made; it releases the
        connection to the pool itself."""
        raw = self._original_response
        response = HTTPResponse(
            body=raw,
            headers=HTTPHeaderDict(_normalize_header_values(raw.msg)),
            status=raw.status,
            version=raw.version,
            version_string=getattr(self._conn, "_http_vsn_str", "HTTP/?"),
            reason=raw.reason,
            preload_content=False,
            decode_content=False,
            original_response=raw,
            enforce_content_length=True,
            request_method=self._method,
            request_url=self._path,
            pool=self._pool,
            connection=self._conn,
        )
        self._conn = None
        return response

    def _release(self) -> None:
        if self._conn is not None:
            self._pool._put_conn(self._conn)
            self._conn = None

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._pool._put_conn(None)
            self._conn = None

    def close(self) -> None:
        """response.raw.close() then release_conn(), as requests' Response.close: the connection is
        closed (read to the end or not) and its slot returned to the pool."""
        if self._urllib3 is not None:
            self._urllib3.close()
            self._urllib3.release_conn()
        else:
            self._original_response.close()
            self._discard()

    def __enter__(self) -> KeptReply:
        return self

    def __exit__(self, *exc: object) -> None:
        # As requests' Response.__exit__: a body read to its end leaves the connection open in the pool.
        if not self.consumed:
            self.close()
        elif self._urllib3 is not None:
            self._urllib3.release_conn()
        else:
            self._release()


def _requests_errors(reply: KeptReply, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """requests' Response.iter_content's translation of urllib3's errors."""
    try:
        yield from chunks
        reply.consumed = True
    except ProtocolError as e:
        raise requests.exceptions.ChunkedEncodingError(e) from e
    except DecodeError as e:
        raise requests.exceptions.ContentDecodingError(e) from e
    except ReadTimeoutError as e:
        raise requests.ConnectionError(e) from e
    except SSLError as e:
        raise requests.exceptions.SSLError(e) from e
