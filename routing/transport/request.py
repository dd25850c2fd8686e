"""The request a delivery makes: method, body and headers, signed with Standard Webhooks.

Plain values in, a frozen OutboundRequest out; serialized once, so the bytes signed are the bytes sent.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from standardwebhooks.webhooks import Webhook

USER_AGENT = "integrator-hub/1"


@dataclass(frozen=True)
class OutboundRequest:
    method: str
    url: str
    body: str
    headers: Mapping[str, str]


# `*:updated` and `*:canceled`, and the other spellings of those two actions that the aliases of
# events/messages.py fold for orders, products and users but that any other resource keeps as sent
# (`stock:update`, `subscription:cancelled`): the same verb whoever spells it.
_PUT_ACTIONS = frozenset({"updated", "update", "canceled", "cancelled", "cancel"})


def method_for(message: str, override: str = "") -> str:
    """POST for new things and anything else, PUT for updates and cancellations (seeds/000)."""
    if override:
        return override.upper()
    action = message.split(":", 1)[-1]
    return "PUT" if action in _PUT_ACTIONS else "POST"


def request_build(
    *,
    url: str,
    message: str,
    message_id: str,
    payload: Mapping[str, Any] | str,
    parameters: Sequence[Mapping[str, Any]],
    webhook_id: str,
    signing_secret: str,
    token: str,
    store_name: str = "",
    method_override: str = "",
    timestamp: datetime | None = None,
    previous_signing_secret: str = "",
) -> OutboundRequest:
    """The envelope with payload.parameters, serialized once so that the bytes signed are the bytes sent.
    `payload` is the payload's value, or its JSON text when json_object_spliceable holds for it.

    With a previous secret (a rotation's grace period) the request carries both signatures,
    space-separated as Standard Webhooks allows, so a verifier with either secret accepts it.
    """
    listed = [{"name": p.get("name"), "value": p.get("value")} for p in parameters if isinstance(p, Mapping)]
    if isinstance(payload, str):
        # The payload's JSON text, canonical (json_object_spliceable): spliced in as it is, the
        # same bytes as writing its value again.
        head = json_compact({"message": message, "message_id": message_id})
        rest = json_compact(listed)
        comma = "" if payload == "{}" else ","
        body = f'{head[:-1]},"payload":{payload[:-1]}{comma}"parameters":{rest}}}}}'
    else:
        body_payload = dict(payload)
        body_payload["parameters"] = listed
        body = json_compact({"message": message, "message_id": message_id, "payload": body_payload})
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "X-Hub-Store": header_value(store_name),
        "X-Hub-Token": header_value(token),
        "X-Augury-Token": header_value(token),
        **signature_headers(
            body=body,
            webhook_id=webhook_id,
            secrets=(signing_secret, previous_signing_secret),
            timestamp=timestamp,
        ),
    }
    return OutboundRequest(method=method_for(message, method_override), url=url, body=body, headers=headers)


def signature_headers(
    *, body: str, webhook_id: str, secrets: Sequence[str], timestamp: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks' three headers over `body`, one signature per secret given (a rotation's
    grace period signs with both), for every payload format (routing.formats)."""
    when = (timestamp or datetime.now(UTC)).astimezone(UTC)
    signature = " ".join(
        _webhook(secret).sign(msg_id=webhook_id, timestamp=when, data=body) for secret in secrets if secret
    )
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


@functools.lru_cache(maxsize=64)
def _webhook(secret: str) -> Webhook:
    """The signer of a secret, its base64 decoded once: an endpoint signs every delivery with the same one."""
    return Webhook(secret)


# Where orjson and json.dumps spell the same number differently: only floats that Python writes in
# exponent form (below 1e-4 or from 1e16 on: `1e-07`, `1e+16`), which orjson writes as `1e-7`,
# `1e16` or `0.00001`. Each pattern starts with a literal, which `re` finds fast; a match is then
# checked to be a number, not part of a string.
_FLOAT_SPELLING_CANDIDATES = (re.compile(rb"e(?<=[0-9]e)[-0-9]"), re.compile(rb"0\.0000"))
_NUMBER_CHARS = frozenset(b"0123456789.")


def json_compact(value: Any) -> str:
    """`json.dumps(value, separators=(",", ":"), ensure_ascii=False)`, the same text, much faster:
    orjson writes it (keys in insertion order, non-ASCII as UTF-8, the same escapes), and
    json.dumps takes over for what orjson would write differently or refuses (an integer beyond 64
    bits, a non-string key, a lone surrogate, another type). NaN and Infinity, which orjson writes
    as null, never get here: payloads and parameters come from validated, stored JSON."""
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:
        data = None
    if data is None or _float_spelled_differently(data):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return data.decode("utf-8")


# An object's opening and first key, then the separator json_compact writes (`:`, no space after).
_COMPACT_OPENING = re.compile(r'\{"(?:[^"\\]|\\.)*":(?! )', re.DOTALL)


def json_object_spliceable(text: str) -> bool:
    """Whether a stored payload's JSON text can go into an envelope as it is: an object without a
    `parameters` key (the envelope writes its own), whose text is what json_compact writes for its
    value when the text comes from the hub's writers (orjson, or json.dumps compact). json.dumps'
    default spacing (the SQLite column, what orjson cannot write) and floats orjson spells
    otherwise are not. Any other valid text gives the same JSON value, if not the same bytes."""
    if text == "{}":
        return True
    if text[-1:] != "}" or _COMPACT_OPENING.match(text) is None or '"parameters"' in text:
        return False
    return not _float_spelled_differently(text.encode("utf-8", "surrogatepass"))


def _float_spelled_differently(data: bytes) -> bool:
    for match in (m for pattern in _FLOAT_SPELLING_CANDIDATES for m in pattern.finditer(data)):
        # Back over the number's digits to what precedes it: a number in the document follows
        # `:`, `[` or `,` (orjson writes no spaces) or starts it; `5e3` in a UUID string follows a
        # letter or `"`.
        i = match.start() - 1
        while i >= 0 and data[i] in _NUMBER_CHARS:
            i -= 1
        if i >= 0 and data[i] == 0x2D:  # "-"
            i -= 1
        if i < 0 or data[i] in b":[,":
            return True
    return False


# Printable ASCII: what every HTTP stack carries unchanged in a header value.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F))


def header_value(value: str) -> str:
    """A store name or token as a header value: printable ASCII as is; anything else (a store
    named 'Boutique Müller' or '東京店', a control character) percent-encoded as UTF-8. http.client
    cannot send it otherwise (it crashed the attempt, and the delivery never got an answer), and
    latin-1 bytes would reach a UTF-8 reader garbled."""
    if value.isascii() and value.isprintable():
        # Every character is in _HEADER_SAFE: what quote would return, without its walk.
        return value
    return quote(value, safe=_HEADER_SAFE)
