"""Which keys of a reply hold returned objects (`"orders": [...]`), what one type of them is
called, and the per-subscription names of the messages they make: pure functions, read by the
subscription's validation and by routing.returned_objects, which makes the events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from events.messages import InvalidMessageName, message_canonical

# Keys of a reply that are about the reply, never a list of objects (PROTOCOL §3 and the newer
# generation's `request_id` / `summary`).
REPLY_KEYS = frozenset(
    {"message", "message_id", "request_id", "summary", "notifications", "messages", "parameters", "errors", "warnings"}
)
# Plurals that dropping the last "s" would spell wrong.
_SINGULAR = {
    "inventories": "inventory",
    "categories": "category",
    "addresses": "address",
    "taxes": "tax",
    "statuses": "status",
    "deliveries": "delivery",
    "companies": "company",
}


def object_type_singular(plural: str) -> str:
    """`orders` -> `order`, `inventories` -> `inventory`."""
    return _SINGULAR.get(plural, plural[:-1] if plural.endswith("s") else plural)


def returned_types(body: Any) -> list[str]:
    """The reply's keys that hold objects: a plural name (ending in s) whose value is a list."""
    if not isinstance(body, Mapping):
        return []
    return [
        key
        for key, value in body.items()
        if isinstance(key, str)
        and key not in REPLY_KEYS
        and len(key) > 1
        and key.endswith("s")
        and key.replace("_", "").isalnum()
        and key == key.lower()
        and isinstance(value, list)
    ]


def objects_present(body: Any) -> bool:
    """Whether a reply returns any object (so that it is worth reading past its status)."""
    return any(body[key] for key in returned_types(body))


def object_messages_validate(value: Any) -> None:
    """Raise ValueError with a sentence when `value` is not {"<plural type>": "<resource:action>"}."""
    if value in (None, ""):
        return
    if not isinstance(value, Mapping):
        raise ValueError('Object messages must be an object, e.g. {"orders": "order:updated"}.')
    for plural, message in value.items():
        if not isinstance(plural, str) or not plural or plural in REPLY_KEYS:
            raise ValueError(f"'{plural}' is not a type of returned objects (e.g. orders, shipments).")
        if not isinstance(message, str):
            raise ValueError(f"The message for '{plural}' must be a string such as 'order:updated'.")
        try:
            message_canonical(message)
        except InvalidMessageName as exc:
            raise ValueError(f"The message for '{plural}': {exc}.") from None
