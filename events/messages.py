"""Message names: the canonical spellings, the aliases older stores send, and resource keys."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings

# The pushable events of the Spree guide, spelled the way the hub stores them.
CANONICAL_MESSAGES: frozenset[str] = frozenset(
    {
        "order:new",
        "order:updated",
        "order:canceled",
        "payment:ready",
        "shipment:ready",
        "shipment:confirm",
        "product:new",
        "product:updated",
        "user:new",
        "user:updated",
    }
)

# Spellings seen in the guides and in older extensions.
MESSAGE_ALIASES: dict[str, str] = {
    "order:update": "order:updated",
    "order:cancel": "order:canceled",
    "order:cancelled": "order:canceled",
    "product:update": "product:updated",
    "user:update": "user:updated",
    "shipment:confirmation": "shipment:confirm",
    "shipment:confirmed": "shipment:confirm",
}

MESSAGE_MAX_LENGTH = 100
_MESSAGE_RE = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*:[a-z][a-z0-9_]*$")

# Where a message's resource key (the order number, say) is found, tried in order.
DEFAULT_RESOURCE_KEY_PATHS: tuple[str, ...] = (
    "{resource}.number",
    "{resource}.actual.number",
    "{resource}.id",
    "number",
    "id",
)
# A shipment or payment naming its order is keyed to it first, sharing the order's FIFO and timeline.
ORDER_OF_RESOURCE_PATHS: tuple[str, ...] = ("{resource}.order_number", "{resource}.order.number", "order_number")

# A path whose last segments are one of these names the order the message belongs to.
_ORDER_KEY_ENDINGS: frozenset[tuple[str, ...]] = frozenset(
    {("order_number",), ("order_id",), ("order", "number"), ("order", "id")}
)


class InvalidMessageName(ValueError):
    """The message is not of the form resource:action."""


def message_canonical(name: str) -> str:
    """Return the canonical spelling of a message name, or raise InvalidMessageName."""
    normalized = name.strip().lower()
    if len(normalized) > MESSAGE_MAX_LENGTH or not _MESSAGE_RE.match(normalized):
        raise InvalidMessageName(
            f"'{name[:MESSAGE_MAX_LENGTH]}' is not a message name of the form resource:action "
            "(lower case letters, digits and underscores, e.g. 'order:new')"
        )
    return MESSAGE_ALIASES.get(normalized, normalized)


def message_resource(message: str) -> str:
    return message.split(":", 1)[0]


def message_action(message: str) -> str:
    return message.split(":", 1)[1]


def payload_get(payload: Any, path: str) -> tuple[bool, Any]:
    """Follow a dotted path (list indexes allowed) through a payload: (found, value)."""
    current = payload
    for part in path.split("."):
        if isinstance(current, Mapping):
            if part not in current:
                return False, None
            current = current[part]
        elif isinstance(current, Sequence) and not isinstance(current, (str, bytes)):
            if not part.isdigit() or int(part) >= len(current):
                return False, None
            current = current[int(part)]
        else:
            return False, None
    return True, current


def resource_key(message: str, payload: Mapping[str, Any]) -> str | None:
    """The key that orders a resource's deliveries (the order number), or None when there is none."""
    configured: Mapping[str, Sequence[str]] = getattr(settings, "HUB_RESOURCE_KEY_PATHS", {})
    paths = configured.get(message) or configured.get(f"{message_resource(message)}:*")
    resource = message_resource(message)
    if not paths:
        defaults = DEFAULT_RESOURCE_KEY_PATHS
        if resource != "order":
            defaults = ORDER_OF_RESOURCE_PATHS + defaults
        paths = [path.format(resource=resource) for path in defaults]
    for path in paths:
        found, value = payload_get(payload, path)
        if found and isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != "":
            return f"{resource_key_owner(resource, path)}:{value}"[:200]
    return None


def resource_key_owner(resource: str, path: str) -> str:
    """Whose key a path holds: the order's when the path names an order number, else the message's."""
    parts = tuple(path.split("."))
    if resource != "order" and (parts[-1:] in _ORDER_KEY_ENDINGS or parts[-2:] in _ORDER_KEY_ENDINGS):
        return "order"
    return resource
