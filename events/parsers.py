"""Request body parsing: JSON only, size-capped before it is read, errors that say where."""

from __future__ import annotations

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


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than `limit`; iterative, so a hostile body cannot blow the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


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
        data = json_loads_or_error(raw)
        max_depth = settings.HUB_MAX_JSON_DEPTH
        if json_depth_exceeds(data, max_depth):
            raise MalformedJson(
                f"The body nests arrays/objects deeper than {max_depth} levels.", field="body", code="too_deep"
            )
        return data
