"""Reading an endpoint's reply: its text in the right charset, made storable, parsed as JSON."""

from __future__ import annotations

import codecs
import functools
import json
import math
import re
from email.message import Message
from typing import Any

# What reply_json returns for a body that is not a JSON document.
NOT_JSON = object()


def reply_json(text: str) -> Any:
    """The reply's JSON document, made storable, or NOT_JSON. Any JSON document is a JSON reply,
    `null` included; only an object carries PROTOCOL §3's fields. Raises RecursionError for a
    document nested too deep to read."""
    if not text.strip():
        return NOT_JSON
    try:
        return _json_storable(json.loads(text, parse_constant=_json_constant_refuse, parse_float=_json_float))
    except ValueError:
        return NOT_JSON


def _json_constant_refuse(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), and PostgreSQL's jsonb refuses them."""
    raise ValueError(f"{name} is not JSON")


def _json_float(text: str) -> float:
    """A number too large for a double (1e400) would become Infinity, which jsonb refuses too."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} does not fit a double")
    return value


def reply_text(raw: bytes, content_type: str) -> str:
    """The endpoint's reply as text. JSON is UTF-8 (RFC 8259), so that is the default whatever the
    media type: requests would read a `text/plain` or `text/html` reply without a charset as
    ISO-8859-1 and garble every accented notification. A charset the endpoint names is honoured,
    and a byte order mark (some .NET and Windows endpoints send one) is dropped."""
    charset = _charset_cached(content_type) if len(content_type) <= 200 else _charset(content_type)
    return raw.decode(charset or "utf-8", errors="replace").removeprefix("\ufeff")


def _charset(content_type: str) -> str | None:
    """The charset a Content-Type names, if Python knows it."""
    header = Message()
    header["content-type"] = content_type
    charset = header.get_content_charset()
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = None
    return charset


# An endpoint sends the same Content-Type each time; a long one (an endpoint's own choice) is not kept.
_charset_cached = functools.lru_cache(maxsize=256)(_charset)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """PostgreSQL cannot store NUL (text or jsonb), and no database can encode a lone surrogate
    (which json.loads makes of a `\\ud83d` escape) as UTF-8: an endpoint's reply holding either
    crashed the attempt before it was recorded, leaving the delivery claimed until its lease ran
    out, and the same again on every retry. U+FFFD marks where."""
    return _UNSTORABLE.sub("\ufffd", text)


def _json_storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_json_storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): _json_storable(item) for key, item in value.items()}
    return value
