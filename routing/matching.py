"""Which subscriptions want an event: pure functions over plain values."""

from __future__ import annotations

from collections.abc import Iterable


def message_matches(pattern: str, message: str) -> bool:
    """'*' matches everything, 'order:*' every order message, anything else only itself."""
    pattern = pattern.strip().lower()
    if pattern in ("*", "*:*"):
        return True
    if pattern.endswith(":*"):
        return message.startswith(pattern[:-1])
    return pattern == message


def message_types_match(patterns: Iterable[str], message: str) -> bool:
    return any(message_matches(p, message) for p in patterns)
