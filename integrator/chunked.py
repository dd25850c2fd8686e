"""Request bodies sent without Content-Length (Transfer-Encoding: chunked).

Django reads only CONTENT_LENGTH bytes of a WSGI body, so a chunked body would look empty and slip
past the size cap unchecked. Servers that de-chunk (gunicorn sets wsgi.input_terminated) hand us a
stream that ends where the body ends. Nothing is read here: the request is marked, and the store
API reads the body (at most the cap plus one byte) once it has authenticated the sender
(events.parsers.unsized_body_receive), so a refused request's body is never read. A server that
cannot de-chunk gets 411, from the headers alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from events.parsers import UNSIZED_BODY

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
            if not environ.get("wsgi.input_terminated"):
                # Without a terminated stream, reading could block on a body that never ends.
                return _reply(
                    start_response,
                    411,
                    "length_required",
                    "Send a Content-Length header or a body the server can de-chunk.",
                )
            environ[UNSIZED_BODY] = True
        return self.app(environ, start_response)


def _reply(start_response: StartResponse, status: int, code: str, detail: str) -> list[bytes]:
    body = json.dumps({"error": code, "detail": detail}).encode()
    reasons = {411: "Length Required"}
    start_response(
        f"{status} {reasons[status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")],
    )
    return [body]
