"""Request body parsing: JSON only, size-capped before it is read, errors that say where."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from rest_framework.parsers import BaseParser

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
            line=line,
            column=column,
        ) from None


class HubJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:  # noqa: ANN001 - DRF's signature
        limit = settings.HUB_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"The body is {declared} bytes; the limit is {limit} bytes.")
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise BodyTooLarge(f"The body is larger than the limit of {limit} bytes.")
        if not raw.strip():
            raise MalformedJson("The body is empty; send a JSON envelope.")
        data = json_loads_or_error(raw)
        json_shape_check(data, max_depth=settings.HUB_MAX_JSON_DEPTH, max_keys=settings.HUB_MAX_JSON_KEYS)
        return data


def json_shape_check(data: Any, *, max_depth: int, max_keys: int) -> None:
    """Refuse documents nested deeper than max_depth, holding more than max_keys object keys in
    all, or carrying a NUL character (valid JSON that PostgreSQL cannot store in jsonb or text).

    Iterative, so that a hostile document cannot exhaust the stack of the checker itself.
    """
    keys = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise MalformedJson(
                    "The body contains a NUL character (\\u0000), which the hub cannot store.",
                    code="nul_character",
                    field="body",
                )
            continue
        if isinstance(value, dict):
            keys += len(value)
            if keys > max_keys:
                raise JsonTooLarge(
                    f"The body has more than {max_keys} object keys in all; the limit is {max_keys}.",
                    code="too_many_keys",
                    field="body",
                    limit=max_keys,
                )
            children: list[Any] = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            raise JsonTooDeep(
                f"The body nests objects and arrays deeper than the limit of {max_depth} levels.",
                code="too_deep",
                field="body",
                limit=max_depth,
            )
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, str)))
