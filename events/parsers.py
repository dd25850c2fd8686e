"""Request body parsing: JSON only, size-capped before it is read, errors that say where."""

from __future__ import annotations

import io
import json
from typing import Any

import orjson
from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from rest_framework.parsers import BaseParser
from rest_framework.request import Request

from events.errors import BodyTooLarge, JsonTooDeep, JsonTooLarge, MalformedJson


def json_error_where(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, column


def json_loads_or_error(raw: bytes) -> Any:
    """Parse JSON; on failure raise MalformedJson naming the line and column where it breaks."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        pos = min(exc.pos, len(text))
        line, column = json_error_where(text, pos)
        reason = exc.msg.split(":")[0] if exc.msg else "invalid JSON"
        snippet = text[max(0, pos - 20) : pos + 20].replace("\n", "\\n")
        raise MalformedJson(
            f"The body is not valid JSON: {reason} at line {line}, column {column} (near '{snippet}').",
            field="body",
            line=line,
            column=column,
        ) from None


# orjson turns integers outside 64 bits into floats; such a float means a big integer may have lost digits.
_LOSSLESS_INT_LIMIT = 2**63


def json_shape_check(data: Any, *, max_depth: int, max_keys: int) -> bool:
    """Refuse documents nested deeper than max_depth, or an envelope holding more than max_keys
    object keys; return whether a float orjson may have made from a big integer is present.

    Keys are counted per envelope: the whole document of a single push, each item of a batch (a
    JSON array, or the list under {"events": [...]}). Counted over a whole batch, the cap refused
    24 ordinary orders (425 keys each) while HUB_MAX_BATCH_SIZE allows 500 envelopes and the
    body cap 1 MiB; what bounds the work of one request is the body cap, what the key cap is for
    is one event's JSON, walked again wherever it is stored and read.
    """
    if type(data) is list:
        return _shape_walk_items(data, 2, max_depth=max_depth, max_keys=max_keys)
    if type(data) is dict and type(data.get("events")) is list:
        items = data["events"]
        rest = {key: value for key, value in data.items() if key != "events"}
        big = _shape_walk(rest, 1, max_depth=max_depth, max_keys=max_keys, where=None)
        return _shape_walk_items(items, 3, max_depth=max_depth, max_keys=max_keys) or big
    return _shape_walk(data, 1, max_depth=max_depth, max_keys=max_keys, where=None)


def _shape_walk_items(items: list[Any], depth: int, *, max_depth: int, max_keys: int) -> bool:
    if depth - 1 > max_depth:
        _too_deep(max_depth)
    big = False
    for index, item in enumerate(items):
        if _shape_walk(item, depth, max_depth=max_depth, max_keys=max_keys, where=index):
            big = True
    return big


def _too_deep(max_depth: int) -> None:
    raise JsonTooDeep(
        f"The body nests objects and arrays deeper than the limit of {max_depth} levels.",
        field="body",
        limit=max_depth,
    )


def _shape_walk(data: Any, depth: int, *, max_depth: int, max_keys: int, where: int | None) -> bool:
    """One iterative pass over a value that starts `depth` levels down in the body, so that a
    hostile document cannot exhaust the stack of the checker itself. (NUL characters are refused
    by the envelope validation, which can name where they are.) Only containers go on the stack,
    and exact type() tests stand in for isinstance(): orjson and json make plain dicts, lists and
    floats, and this walk runs over every value of every body, where it was a noticeable share of
    the request."""
    keys = 0
    big_number = type(data) is float and abs(data) >= _LOSSLESS_INT_LIMIT and data.is_integer()
    stack: list[tuple[Any, int]] = [(data, depth)]
    while stack:
        value, depth = stack.pop()
        if type(value) is dict:
            keys += len(value)
            if keys > max_keys:
                what = "The body has" if where is None else f"The event at index {where} has"
                raise JsonTooLarge(
                    f"{what} more than {max_keys} object keys in all; the limit is {max_keys}.",
                    field="body" if where is None else f"events[{where}]",
                    limit=max_keys,
                )
            children: Any = value.values()
        elif type(value) is list:
            children = value
        else:
            continue
        if depth > max_depth:
            _too_deep(max_depth)
        depth += 1
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth))
            elif kind is float and not big_number and abs(child) >= _LOSSLESS_INT_LIMIT and child.is_integer():
                big_number = True
    return big_number


def json_parse_body(raw: bytes, *, max_depth: int, max_keys: int) -> Any:
    """Parse a request body: errors that say where, depth and key caps, and integers kept exact."""
    data = json_loads_or_error(raw)
    if json_shape_check(data, max_depth=max_depth, max_keys=max_keys):
        # The payload is kept as sent: the standard library keeps integers of any size. orjson has
        # already checked the syntax, which is stricter than json's (no NaN, no Infinity).
        try:
            data = json.loads(raw)
        except ValueError as exc:  # e.g. an integer over Python's 4300-digit limit
            raise MalformedJson(f"The body has a number the hub cannot keep exactly: {exc}.", field="body") from None
    return data


class HubJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:  # noqa: ANN001 - DRF's signature
        limit = settings.HUB_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        # Refuse on the declared length alone: an oversized body is never read, let alone parsed.
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"The body is {declared} bytes; the limit is {limit} bytes.", field="body")
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise BodyTooLarge(f"The body is larger than the limit of {limit} bytes.", field="body")
        # RFC 8259 lets a parser ignore a UTF-8 byte order mark; Windows and .NET store clients send one.
        raw = raw.removeprefix(b"\xef\xbb\xbf")
        if not raw.strip():
            raise MalformedJson("The body is empty; send a JSON envelope.", field="body")
        return json_parse_body(raw, max_depth=settings.HUB_MAX_JSON_DEPTH, max_keys=settings.HUB_MAX_JSON_KEYS)


# Set by integrator.chunked on a request whose de-chunked body has not been read yet.
UNSIZED_BODY = "hub.unsized_body"


def unsized_body_receive(request: Request) -> None:
    """Read a chunked body now that its sender is authenticated, at most the cap plus one byte,
    and hand it to Django as a sized one. Nothing to do for a body with a Content-Length."""
    meta = request.META
    if not meta.pop(UNSIZED_BODY, False):
        return
    limit = settings.HUB_MAX_BODY_BYTES
    stream = meta["wsgi.input"]
    parts: list[bytes] = []
    remaining = limit + 1
    while remaining > 0:
        chunk = stream.read(min(remaining, 64 * 1024))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    raw = b"".join(parts)
    if len(raw) > limit:
        raise BodyTooLarge(f"The body is larger than the limit of {limit} bytes.", field="body")
    meta["CONTENT_LENGTH"] = str(len(raw))
    # Django sized its body stream from CONTENT_LENGTH when the request was made (empty, then).
    request._request._stream = LimitedStream(io.BytesIO(raw), len(raw))
