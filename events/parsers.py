"""Request body parsing: JSON only, size-capped before it is read, errors that say where."""

from __future__ import annotations

import json
from typing import Any

import orjson
from django.conf import settings
from rest_framework.parsers import BaseParser

from events.errors import BodyTooLarge, MalformedJson


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


def json_scan(value: Any, max_depth: int) -> tuple[bool, bool]:
    """(nests deeper than max_depth, holds a float orjson may have made from a big integer) in one
    iterative pass, so a hostile body cannot blow the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    too_deep = big_number = False
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children = current.values()
        elif isinstance(current, list):
            children = current
        else:
            if isinstance(current, float) and abs(current) >= _LOSSLESS_INT_LIMIT and current.is_integer():
                big_number = True
            continue
        if depth > max_depth:
            too_deep = True
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, float)))
    return too_deep, big_number


def json_parse_body(raw: bytes, *, max_depth: int) -> Any:
    """Parse a request body: errors that say where, a depth cap, and integers kept exact."""
    data = json_loads_or_error(raw)
    too_deep, big_number = json_scan(data, max_depth)
    if too_deep:
        raise MalformedJson(
            f"The body nests arrays/objects deeper than {max_depth} levels.", field="body", code="too_deep"
        )
    if big_number:
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
        if not raw.strip():
            raise MalformedJson("The body is empty; send a JSON envelope.", field="body")
        return json_parse_body(raw, max_depth=settings.HUB_MAX_JSON_DEPTH)
