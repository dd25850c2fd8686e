"""Checking what a store sends before anything is stored: an envelope's shape, and the `since` of a query."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from events.errors import InvalidEnvelope
from events.messages import InvalidMessageName, message_canonical
from events.models import payload_orjson

MESSAGE_ID_MAX_LENGTH = 255


@dataclass(frozen=True)
class Envelope:
    message: str
    message_id: str | None
    payload: dict[str, Any]
    # The payload as orjson wrote it for the NUL check, handed on to the INSERT so that it is not
    # written twice (None when orjson refused it: json.dumps writes it then, as before).
    payload_json: bytes | None = field(default=None, repr=False, compare=False)


def envelope_validate(data: Any) -> Envelope:
    """Check the shape of one envelope and return it with the canonical message name."""
    if not isinstance(data, Mapping):
        raise InvalidEnvelope(f"An event must be a JSON object with 'message' and 'payload', not {json_type(data)}.")
    if "message" not in data or data["message"] in (None, ""):
        raise InvalidEnvelope("'message' is required, e.g. \"order:new\".", field="message")
    if not isinstance(data["message"], str):
        raise InvalidEnvelope(f"'message' must be a string, not {json_type(data['message'])}.", field="message")
    try:
        message = message_canonical(data["message"])
    except InvalidMessageName as exc:
        raise InvalidEnvelope(str(exc), field="message") from None

    message_id = data.get("message_id")
    if message_id is not None:
        if isinstance(message_id, bool) or not isinstance(message_id, (str, int)):
            raise InvalidEnvelope(f"'message_id' must be a string, not {json_type(message_id)}.", field="message_id")
        message_id = str(message_id).strip()
        if not message_id:
            raise InvalidEnvelope("'message_id' must not be empty; leave it out to have one made.", field="message_id")
        if "\x00" in message_id:
            raise InvalidEnvelope("'message_id' must not contain the NUL character (\\u0000).", field="message_id")
        if len(message_id) > MESSAGE_ID_MAX_LENGTH:
            raise InvalidEnvelope(
                f"'message_id' is longer than {MESSAGE_ID_MAX_LENGTH} characters.", field="message_id"
            )

    if "payload" not in data:
        raise InvalidEnvelope("'payload' is required and must be a JSON object.", field="payload")
    payload = data["payload"]
    if not isinstance(payload, Mapping):
        raise InvalidEnvelope(f"'payload' must be a JSON object, not {json_type(payload)}.", field="payload")
    # The payload's text as the INSERT will send it; a NUL character, in a key or a string, is
    # found in it in C: orjson writes one as backslash-u0000, and only text holding that (a NUL, or
    # those six characters themselves) or what orjson does not write (None) needs the walk in
    # Python that names where it is: walking every payload cost more than the rest of validation.
    payload_json = payload_orjson(payload)
    nul_at = _nul_path(payload) if payload_json is None or _NUL_ESCAPE in payload_json else None
    if nul_at is not None:
        # PostgreSQL cannot hold NUL as text or jsonb (the json column keeps the escape, but a payload
        # with it could not go back to jsonb, events.0007); refusing it everywhere keeps SQLite and
        # PostgreSQL alike.
        raise InvalidEnvelope(
            f"'payload' contains the NUL character (\\u0000) at '{nul_at}', which the hub cannot store.",
            field="payload",
        )
    return Envelope(message=message, message_id=message_id, payload=dict(payload), payload_json=payload_json)


def _nul_path(payload: Mapping[str, Any]) -> str | None:
    """The dotted path of the first key or string holding a NUL character, or None."""
    stack: list[tuple[Any, str]] = [(payload, "payload")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return path
        elif isinstance(value, Mapping):
            for key, child in value.items():
                if "\x00" in key:
                    return f"{path}.{key!r}"
                stack.append((child, f"{path}.{key}"))
        elif isinstance(value, list):
            stack.extend((child, f"{path}.{index}") for index, child in enumerate(value))
    return None


# How orjson writes a NUL character, in a key or a string: JSON has no other way to carry one.
_NUL_ESCAPE = b"\\u0000"


def json_type(value: Any) -> str:
    """What a parsed JSON value is, as an error message names it: "an object", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


_RELATIVE = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def since_parse(raw: str, *, relative: bool = False) -> datetime | None:
    """An ISO 8601 date-time (naive means UTC) or a plain date (its midnight, UTC); with
    `relative`, also a time ago such as '90m', '6h' or '2d'. None when it is none of those."""
    raw = raw.strip()
    if relative and (ago := _RELATIVE.match(raw)):
        return timezone.now() - timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
    # An unencoded '+' in a query string arrives as a space: "...T12:00:00 02:00" meant "+02:00".
    raw = re.sub(r"(T[\d:.]+) (\d\d:?\d\d)$", r"\1+\2", raw)
    try:
        value = parse_datetime(raw)
        if value is None:
            day = parse_date(raw)
            value = datetime.combine(day, time.min) if day is not None else None
    except ValueError:
        value = None
    if value is None:
        return None
    return timezone.make_aware(value, UTC) if timezone.is_naive(value) else value
