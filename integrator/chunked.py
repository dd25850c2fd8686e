"""Request bodies sent without Content-Length (Transfer-Encoding: chunked).

Django reads only CONTENT_LENGTH bytes of a WSGI body, so a chunked body would look empty and slip
past the size cap unchecked. Servers that de-chunk (gunicorn sets wsgi.input_terminated) hand us a
stream that ends where the body ends: read it here, at most the cap plus one byte, answer 413 in the
API's JSON shape when it is too big, and otherwise give Django a plain, sized body.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _has_unsized_body(environ: dict[str, Any]) -> bool:
    # HTTP/1.1 has a body without Content-Length only when it is chunked.
    return not environ.get("CONTENT_LENGTH") and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


class ChunkedBodyLimit:
    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if _has_unsized_body(environ):
            limit = settings.HUB_MAX_BODY_BYTES
            if not environ.get("wsgi.input_terminated"):
                # Without a terminated stream, reading could block on a body that never ends.
                return _reply(
                    start_response,
                    411,
                    "length_required",
                    "Send a Content-Length header or a body the server can de-chunk.",
                )
            raw = _read_at_most(environ["wsgi.input"], limit + 1)
            if len(raw) > limit:
                return _reply(
                    start_response, 413, "body_too_large", f"The body is larger than the limit of {limit} bytes."
                )
            environ["wsgi.input"] = io.BytesIO(raw)
            environ["CONTENT_LENGTH"] = str(len(raw))
        return self.app(environ, start_response)


def _read_at_most(stream: Any, size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(min(remaining, 64 * 1024))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _reply(start_response: StartResponse, status: int, code: str, detail: str) -> list[bytes]:
    body = json.dumps({"error": code, "detail": detail}).encode()
    reasons = {411: "Length Required", 413: "Content Too Large"}
    start_response(
        f"{status} {reasons[status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")],
    )
    return [body]
