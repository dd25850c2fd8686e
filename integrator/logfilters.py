"""Log records never carry secrets: store tokens, signing secrets and Authorization headers are
masked wherever they appear (the message, its arguments, or values passed with `extra=`).

Structured fields go in `extra=` with these names so every log line can be searched the same way:
`event_id`, `delivery_id`, `subscription`, `store`, `event_message` (`message` is taken by
the logging module itself).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"

# Store tokens are "hub_" + 43 url-safe characters and signing secrets "whsec_" + base64; the
# minimum lengths keep names such as "hub_events" or a database called "hub_ops" readable.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"), "whsec_" + REDACTED),
    (re.compile(r"\bhub_[A-Za-z0-9_-]{24,}"), "hub_" + REDACTED),
    # Management keys (ops.models): "hubm_" + 43 url-safe characters.
    (re.compile(r"\bhubm_[A-Za-z0-9_-]{24,}"), "hubm_" + REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (
        re.compile(
            r"(?i)\b((?:http_)?(?:authorization|x[-_]hub[-_]token|x[-_]hub[-_]access[-_]token|x[-_]augury[-_]token)"
            r"[\"']?\s*[:=]\s*[\"']?)([^\"',}\s]+)"
        ),
        r"\1" + REDACTED,
    ),
    # Credentials inside URLs: postgres://user:password@host, amqp://guest:guest@host.
    (re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@"), r"\1" + REDACTED + "@"),
)

# What every pattern above needs somewhere in the text: one search for these decides whether the
# substitutions can change anything. Most log values (ids, names, counts) hold none of them,
# and a batch logs one line per event.
_SECRET_HINT = re.compile(r"(?i)whsec_|hubm?_|bearer|basic|authorization|token|://")

_SECRET_KEY_NAMES = re.compile(
    r"(?i)(authorization|token|secret|password|passwd|api[-_]?key|signature|cookie|x[-_]augury)"
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def secrets_redact(value: Any, *, _depth: int = 0) -> Any:
    """A copy of `value` with anything that looks like a secret masked (strings, dicts, lists)."""
    if _depth > 8:
        return value
    if isinstance(value, str):
        return _text_redact(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and _SECRET_KEY_NAMES.search(key) and not _is_id_name(key)
            else secrets_redact(item, _depth=_depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(secrets_redact(item, _depth=_depth + 1) for item in value)
    return value


# Short strings in which _SECRET_HINT found nothing: a value logged again and again (an endpoint's
# name, a host, a message's text) is searched once. Only such strings are kept, never one that held
# a secret; emptied when full.
_HINTLESS: set[str] = set()
_HINTLESS_MAX = 4096
_HINTLESS_LENGTH = 256


def _text_redact(value: str) -> str:
    short = len(value) <= _HINTLESS_LENGTH
    if short and value in _HINTLESS:
        return value
    if _SECRET_HINT.search(value):
        for pattern, replacement in _SECRET_PATTERNS:
            value = pattern.sub(replacement, value)
        return value
    if short:
        if len(_HINTLESS) >= _HINTLESS_MAX:
            _HINTLESS.clear()
        _HINTLESS.add(value)
    return value


def _is_id_name(key: str) -> bool:
    # "token_hint" is the first characters of a token, shown in the admin on purpose.
    return key.lower() in {"token_hint"}


class SecretRedactionFilter(logging.Filter):
    """Masks secrets in place; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must still be logged
            message = str(record.msg)
        record.msg = _text_redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # Formatters (the JSON one too) fall back to exc_text when exc_info is gone, so the
            # masked traceback is the one written.
            record.exc_text = secrets_redact(record.exc_text)
            record.exc_info = None
        fields = record.__dict__
        for name in fields.keys() - _RECORD_ATTRIBUTES:
            if _secret_name(name):
                fields[name] = REDACTED
                continue
            value = fields[name]
            kind = type(value)
            if kind is str:
                fields[name] = _text_redact(value)
            elif kind not in _PLAIN_TYPES:
                fields[name] = secrets_redact(value)
        return True


# Values that cannot hold a secret's text: left as they are without a look.
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


@functools.lru_cache(maxsize=1024)
def _secret_name(name: str) -> bool:
    """Whether an `extra=` field's name says its value is a secret. The names come from the code,
    a few dozen of them: each is searched once."""
    return bool(_SECRET_KEY_NAMES.search(name)) and not _is_id_name(name)
