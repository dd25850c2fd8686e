"""What a delivery looks like on the wire for each payload format, and where it goes.

- `envelope`: the hub's own (PROTOCOL §2), `{message, message_id, payload}` with
  `payload.parameters` as a list of `{name, value}`; what Spree's older endpoints read.
- `flat`: what the newer Spree hub generation sent to endpoint_base endpoints:
  `{"request_id", "<object>": {...}, "parameters": {...}}`, always POSTed (endpoint_base reads
  bodies and checks X-Hub-Token on POST only), each message to its own path (`/add_order`).
- `transform`: the subscription's JSONata mapping of the hub's description (routing.transform).

Every format is signed the same way (Standard Webhooks headers over the bytes sent). Pure
functions of plain values, plus `delivery_request`, which reads them off a subscription and event.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from events.models import StoredPayload, payload_stored
from routing.transform import TransformError, transform_run
from routing.transport.exchange import ExchangeResult
from routing.transport.request import (
    USER_AGENT,
    OutboundRequest,
    header_value,
    json_compact,
    json_object_spliceable,
    method_for,
    request_build,
    signature_headers,
)

ENVELOPE, FLAT, TRANSFORM = "envelope", "flat", "transform"

# Where a flat endpoint takes each message when the subscription names no path for it: the
# endpoint_base integrations' routes, `/add_order`, `/update_order`, `/cancel_order`,
# `/add_shipment` (a shipment ready to send), `/update_shipment` (one confirmed shipped).
FLAT_DEFAULT_PATH = "/{verb}_{resource}"
_VERBS = {
    "new": "add",
    "ready": "add",
    "updated": "update",
    "update": "update",
    "confirm": "update",
    "canceled": "cancel",
    "cancelled": "cancel",
    "cancel": "cancel",
}
_PLACEHOLDERS = frozenset({"resource", "action", "verb"})
# A path under the subscription's URL: segments of URL path characters and placeholders; no
# scheme, host, query, `..` or empty segment, so a path can never point the delivery elsewhere.
_PATH_RE = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:@{}-]+)*/?$")
PATH_MAX_CHARS = 200
# Keys of a flat body the hub writes itself; a payload's own keys of these names are left out.
_FLAT_RESERVED = frozenset({"request_id", "parameters"})


class RenderFailed(Exception):
    """A delivery that cannot be rendered (a failed mapping): a failed attempt, never retried,
    since the same mapping of the same event fails the same way."""

    def __init__(self, message: str, *, method: str, url: str) -> None:
        super().__init__(message)
        self.method, self.url = method, url

    def exchange_result(self) -> ExchangeResult:
        return ExchangeResult(
            method=self.method, url=self.url, status_code=None, latency_ms=0, error=str(self), permanent=True
        )


# --- Pieces --------------------------------------------------------------------------------------
def message_parts(message: str) -> tuple[str, str]:
    resource, _, action = message.partition(":")
    return resource, action


def parameters_object(parameters: Sequence[Any]) -> dict[str, Any]:
    """The list form `[{"name", "value"}]` as the object newer endpoints read (`config['key']`)."""
    return {p.get("name"): p.get("value") for p in parameters if isinstance(p, Mapping) and "name" in p}


def object_key(message: str, payload: Mapping[str, Any]) -> str | None:
    """The payload's key holding the message's object: the resource's name (`order` for
    `order:new`) when the payload has it, else the payload's only object-valued key; None when the
    payload is the object itself."""
    resource, _ = message_parts(message)
    if isinstance(payload.get(resource), Mapping):
        return resource
    objects = [k for k, v in payload.items() if isinstance(v, Mapping) and k not in _FLAT_RESERVED]
    return objects[0] if len(objects) == 1 else None


def flat_body(
    *, message: str, message_id: str, payload: Mapping[str, Any], parameters: Sequence[Any]
) -> dict[str, Any]:
    """`{"request_id", "<object>": {...}, "parameters": {...}}`; the payload's other keys ride
    along at the top, as endpoint_base hands the whole body to the endpoint."""
    key = object_key(message, payload)
    body: dict[str, Any] = {"request_id": message_id}
    if key is None:
        rest = {k: v for k, v in payload.items() if k not in _FLAT_RESERVED}
        # A pull (`get_orders`, an empty payload) sends only its request_id and parameters.
        if rest or ":" in message:
            body[message_parts(message)[0]] = rest
    else:
        body[key] = payload[key]
        body.update((k, v) for k, v in payload.items() if k != key and k not in _FLAT_RESERVED)
    body["parameters"] = parameters_object(parameters)
    return body


def transform_input(
    *,
    message: str,
    message_id: str,
    event_id: str,
    store_name: str,
    payload: Mapping[str, Any],
    parameters: Sequence[Any],
) -> dict[str, Any]:
    """What a mapping is written against: the hub's description of the event (docs/protocol.md)."""
    return {
        "message": message,
        "message_id": message_id,
        "event_id": event_id,
        "store": store_name,
        "payload": dict(payload),
        "parameters": parameters_object(parameters),
    }


# --- Paths ---------------------------------------------------------------------------------------
def paths_validate(paths: Any) -> None:
    """Raise ValueError with a sentence when `paths` is not a usable message -> path map."""
    from routing.matching import message_types_validate

    if paths in (None, ""):
        return
    if not isinstance(paths, Mapping):
        raise ValueError('Paths must be an object, e.g. {"order:new": "/add_order", "order:*": "/{verb}_order"}.')
    for key, path in paths.items():
        try:
            message_types_validate([key])
        except ValueError:
            raise ValueError(
                f"Paths: '{str(key)[:100]}' is not a message name such as 'order:new', a wildcard such as "
                "'order:*', or '*'."
            ) from None
        if not isinstance(path, str):
            raise ValueError(f"Paths: the path for '{key}' must be a string such as \"/add_order\".")
        if len(path) > PATH_MAX_CHARS or not _PATH_RE.match(path) or "/../" in path + "/" or "/./" in path + "/":
            raise ValueError(
                f"Paths: '{path[:100]}' (for '{key}') must be empty or a path under the subscription's URL, "
                "such as \"/add_order\" (no host, query or '..')."
            )
        names = {name for _, name, _, _ in string.Formatter().parse(path) if name is not None}
        unknown = sorted(names - _PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"Paths: '{path[:100]}' uses {{{unknown[0]}}}; the placeholders are {{resource}}, {{action}} "
                "and {verb}."
            )


def path_for(message: str, paths: Mapping[str, str] | None, payload_format: str) -> str:
    """The path a message goes to: the subscription's entry for it (its exact name, else
    `resource:*`, else `*`), else the format's default (flat: `/{verb}_{resource}`; the others:
    the URL as it is). Placeholders filled in."""
    if not paths and payload_format != FLAT:
        # No entry and no default: the URL as it is, as the walk below finds.
        return ""
    from routing.matching import message_matches

    paths = {k.strip().lower(): v for k, v in (paths or {}).items()}
    resource, action = message_parts(message)
    exact = [k for k in paths if k not in ("*", "*:*") and not k.endswith(":*")]
    template = next((paths[k] for k in exact if message_matches(k, message)), None)
    if template is None:
        template = paths.get(f"{resource}:*")
    if template is None:
        template = paths.get("*", paths.get("*:*"))
    if template is None and payload_format == FLAT:
        # A message without an action (a pull's `get_orders`) is its own route.
        template = FLAT_DEFAULT_PATH if action else "/{resource}"
    if template is None:
        template = ""
    return template.format(resource=resource, action=action, verb=_VERBS.get(action, action))


def url_with_path(url: str, path: str) -> str:
    """`path` under `url`'s own path, the query kept: https://erp/hub?k=1 + /add_order ->
    https://erp/hub/add_order?k=1."""
    if not path:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + path.lstrip("/")))


# --- The request ---------------------------------------------------------------------------------
def request_render(
    *,
    payload_format: str,
    url: str,
    message: str,
    message_id: str,
    payload: Mapping[str, Any] | StoredPayload,
    parameters: Sequence[Any],
    webhook_id: str,
    signing_secret: str,
    token: str,
    store_name: str = "",
    method_override: str = "",
    paths: Mapping[str, str] | None = None,
    transform: str = "",
    timestamp: datetime | None = None,
    previous_signing_secret: str = "",
) -> OutboundRequest:
    """The signed request of one delivery in the subscription's format; RenderFailed when its
    mapping fails. A StoredPayload goes into an envelope as its text when that writes the same
    bytes (json_object_spliceable), and is parsed otherwise."""
    target = url_with_path(url, path_for(message, paths, payload_format))
    if payload_format not in (FLAT, TRANSFORM):
        if isinstance(payload, StoredPayload):
            if payload.spliceable is None:
                payload.spliceable = json_object_spliceable(payload.text)
            payload = payload.text if payload.spliceable else payload.value()
        request = request_build(
            url=target,
            message=message,
            message_id=message_id,
            payload=payload,
            parameters=parameters,
            webhook_id=webhook_id,
            signing_secret=signing_secret,
            previous_signing_secret=previous_signing_secret,
            token=token,
            store_name=store_name,
            method_override=method_override,
            timestamp=timestamp,
        )
        return request
    if isinstance(payload, StoredPayload):
        payload = payload.value()
    if payload_format == FLAT:
        method = method_override.upper() if method_override else "POST"
        body = json_compact(flat_body(message=message, message_id=message_id, payload=payload, parameters=parameters))
    else:
        method = method_for(message, method_override)
        document = transform_input(
            message=message,
            message_id=message_id,
            event_id=webhook_id,
            store_name=store_name,
            payload=payload,
            parameters=parameters,
        )
        try:
            body = transform_run(transform, document)
        except TransformError as exc:
            raise RenderFailed(str(exc), method=method, url=target) from None
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "X-Hub-Store": header_value(store_name),
        "X-Hub-Token": header_value(token),
        **signature_headers(
            body=body,
            webhook_id=webhook_id,
            secrets=(signing_secret, previous_signing_secret),
            timestamp=timestamp,
        ),
    }
    return OutboundRequest(method=method, url=target, body=body, headers=headers)


def delivery_request(
    subscription: Any,
    event: Any,
    *,
    store_name: str,
    previous_signing_secret: str = "",
    parameters: Sequence[Any] | None = None,
    transform: str | None = None,
    timestamp: datetime | None = None,
) -> OutboundRequest:
    """The request of `event` for `subscription` (model instances), as a delivery sends it;
    `parameters` are the ones a batch carries on (a reply's returned ones included), else the
    subscription's; `transform` tries another mapping than the saved one (the admin's "try it")."""
    return request_render(
        payload_format=subscription.payload_format,
        url=subscription.url,
        message=event.message,
        message_id=event.message_id,
        payload=payload_stored(event),
        parameters=(subscription.parameters or []) if parameters is None else parameters,
        webhook_id=str(event.uid),
        signing_secret=subscription.signing_secret,
        previous_signing_secret=previous_signing_secret,
        token=subscription.token,
        store_name=store_name,
        method_override=subscription.http_method,
        paths=subscription.paths,
        transform=subscription.transform if transform is None else transform,
        timestamp=timestamp,
    )
