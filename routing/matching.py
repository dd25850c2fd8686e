"""Which subscriptions want an event: pure functions over plain values."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import re2

from events.messages import MESSAGE_ALIASES, InvalidMessageName, message_canonical, payload_get

logger = logging.getLogger(__name__)

FILTER_OPS: tuple[str, ...] = ("eq", "neq", "gt", "lt", "begins", "contains", "ends", "present", "empty", "match")
# Operators that look only at whether there is a value, not at what it is.
_VALUELESS_OPS = frozenset({"present", "empty"})
_FILTER_KEYS = frozenset({"path", "op", "value"})
FILTER_MODES: tuple[str, ...] = ("all", "any")
REGEX_MAX_LENGTH = 500
# The memory RE2 may give one compiled pattern; a pattern whose program needs more is refused.
REGEX_MAX_MEMORY = 1 << 20
_PATTERN_RE = re2.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*:\*$")


def message_matches(pattern: str, message: str) -> bool:
    """'*' matches everything, 'order:*' every order message, anything else (or its alias) only itself."""
    pattern = pattern.strip().lower()
    if pattern in ("*", "*:*"):
        return True
    if pattern.endswith(":*"):
        return message.startswith(pattern[:-1])
    return MESSAGE_ALIASES.get(pattern, pattern) == message


def message_types_match(patterns: Iterable[str], message: str) -> bool:
    return any(message_matches(p, message) for p in patterns)


def message_types_validate(patterns: Any) -> None:
    """Raise ValueError with a sentence when `patterns` is not a usable list of message types. An
    empty list is one: the subscription gets no pushed event (nothing matches it), only the ticks
    of its schedule, which are sent to it whatever its message types (routing.schedules)."""
    if not isinstance(patterns, list):
        raise ValueError(
            'Message types must be a list, e.g. ["order:new", "shipment:*"] or ["*"]; [] for none '
            "(a subscription that only pulls, on its schedule)."
        )
    for index, pattern in enumerate(patterns, start=1):
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"Message type {index} must be a non-empty string.")
        normalized = pattern.strip().lower()
        if normalized in ("*", "*:*") or _PATTERN_RE.match(normalized):
            continue
        try:
            message_canonical(normalized)
        except InvalidMessageName:
            raise ValueError(
                f"Message type {index} ('{pattern[:100]}') is not a message name such as 'order:new', "
                "a wildcard such as 'order:*', or '*'."
            ) from None


def filters_validate(filters: Any) -> None:
    """Raise ValueError with a sentence naming the first bad filter; None when all are usable."""
    if filters in (None, ""):
        return
    if not isinstance(filters, list):
        raise ValueError('Filters must be a list, e.g. [{"path": "order.channel", "op": "eq", "value": "spree"}].')
    for index, item in enumerate(filters, start=1):
        if not isinstance(item, Mapping):
            raise ValueError(f"Filter {index} must be an object with 'path', 'op' and 'value'.")
        unknown = sorted(set(item) - _FILTER_KEYS)
        if unknown:
            raise ValueError(f"Filter {index} has unknown key(s) {', '.join(unknown)}; use path, op and value.")
        path = item.get("path")
        if not isinstance(path, str) or not path.strip() or any(not part for part in path.split(".")):
            raise ValueError(f"Filter {index} needs a 'path' such as 'order.channel' (dot-separated, no empty parts).")
        op = item.get("op")
        if op not in FILTER_OPS:
            raise ValueError(f"Filter {index} has op {op!r}; it must be one of {', '.join(FILTER_OPS)}.")
        if op in _VALUELESS_OPS:
            continue
        if "value" not in item:
            raise ValueError(f"Filter {index} ({op}) needs a 'value'.")
        value = item["value"]
        if op in ("begins", "ends", "match") and not isinstance(value, str):
            raise ValueError(f"Filter {index} ({op}) needs a string 'value'.")
        if op in ("gt", "lt") and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            raise ValueError(f"Filter {index} ({op}) needs a number or a string 'value' to compare with.")
        if op == "match":
            problem = regex_problem(value)
            if problem:
                raise ValueError(f"Filter {index} (match) {problem}.")


def filter_mode_validate(mode: Any) -> None:
    if mode not in FILTER_MODES:
        raise ValueError(f"Filter mode must be one of {', '.join(FILTER_MODES)}.")


def filters_match(filters: Sequence[Mapping[str, Any]] | None, payload: Any, mode: str = "all") -> bool:
    """No filters match everything; otherwise every filter (mode 'all') or one of them ('any')."""
    if not filters:
        return True
    results = (filter_matches(f, payload) for f in filters)
    return any(results) if mode == "any" else all(results)


def filter_matches(spec: Mapping[str, Any], payload: Any) -> bool:
    found, actual = payload_get(payload, str(spec.get("path", "")))
    op = spec.get("op")
    expected = spec.get("value")
    if op == "present":
        return found and actual is not None
    if op == "empty":
        return not found or actual is None or actual in ("", [], {})
    if op == "neq":
        return not (found and _equal(actual, expected))
    if not found or actual is None:
        return False
    if op == "eq":
        return _equal(actual, expected)
    if op in ("gt", "lt"):
        order = _compare(actual, expected)
        if order is None:
            return False
        return order > 0 if op == "gt" else order < 0
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list):
            return any(_equal(item, expected) for item in actual)
        if isinstance(actual, Mapping):
            return isinstance(expected, str) and expected in actual
        return False
    if op == "begins":
        return isinstance(actual, str) and isinstance(expected, str) and actual.startswith(expected)
    if op == "ends":
        return isinstance(actual, str) and isinstance(expected, str) and actual.endswith(expected)
    if op == "match":
        if isinstance(actual, bool) or not isinstance(actual, (str, int, float)) or not isinstance(expected, str):
            return False
        regex = regex_compile(expected)
        # A pattern RE2 refuses matches nothing; it is never handed to Python's backtracking `re`.
        if regex is None:
            return False
        # RE2 reads UTF-8; a lone surrogate (possible in an endpoint's reply) must not raise.
        return regex.search(str(actual).encode("utf-8", "surrogatepass")) is not None
    return False


def regex_problem(pattern: str) -> str:
    """Why `pattern` cannot be a `match` filter (RE2, linear in the value), or ""."""
    return _regex_compiled(pattern)[1]


def regex_compile(pattern: str) -> Any:
    """The RE2 regex for `pattern`, or None when it is not one RE2 accepts."""
    return _regex_for_routing(pattern)


@functools.lru_cache(maxsize=256)
def _regex_for_routing(pattern: str) -> Any:
    # Cached apart from _regex_compiled so a refused pattern is logged once per process.
    regex, problem = _regex_compiled(pattern)
    if regex is None:
        logger.warning("A match filter never matches: its pattern %r %s.", pattern[:100], problem)
    return regex


@functools.lru_cache(maxsize=256)
def _regex_compiled(pattern: str) -> tuple[Any, str]:
    if len(pattern) > REGEX_MAX_LENGTH:
        return None, f"has a pattern longer than {REGEX_MAX_LENGTH} characters"
    options = re2.Options()
    options.max_mem = REGEX_MAX_MEMORY
    options.log_errors = False  # RE2 would print to stderr; the reason is returned instead
    try:
        return re2.compile(pattern, options), ""
    except re2.error as exc:
        return None, _regex_reason(exc)


_REASONS = (
    ("invalid escape sequence: \\1", "uses a backreference"),
    ("invalid perl operator: (?P", "uses a backreference"),
    ("invalid escape sequence: \\Z", "uses \\Z (RE2 spells the end of the text \\z)"),
    ("invalid perl operator: (?=", "uses a lookahead"),
    ("invalid perl operator: (?!", "uses a lookahead"),
    ("invalid perl operator: (?<", "uses a lookbehind"),
    ("invalid perl operator: (?>", "uses an atomic group"),
    ("bad repetition operator: *+", "uses a possessive repeat"),
    ("bad repetition operator: ++", "uses a possessive repeat"),
    ("bad repetition operator: ?+", "uses a possessive repeat"),
    ("pattern too large", "is too large"),
)


def _regex_reason(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else ""
    reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    # \1 to \9 are backreferences; RE2 names the escape it refuses.
    key = reason[:-1] + "1" if reason.startswith("invalid escape sequence: \\") and reason[-1:].isdigit() else reason
    what = next((what for prefix, what in _REASONS if key.startswith(prefix)), "is not a valid regular expression")
    return (
        f"{what} ({reason}): patterns run on RE2, a linear-time engine without backreferences, "
        "lookaround or atomic groups (syntax: https://github.com/google/re2/wiki/Syntax)"
    )


def _number(value: Any) -> Decimal | None:
    """Stores send amounts as strings ("114.95") as often as numbers; compare them as numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _equal(actual: Any, expected: Any) -> bool:
    if actual == expected and type(actual) is type(expected):
        return True
    left, right = _number(actual), _number(expected)
    if left is not None and right is not None:
        return left == right
    return actual == expected and not isinstance(actual, bool) and not isinstance(expected, bool)


def _compare(actual: Any, expected: Any) -> int | None:
    left, right = _number(actual), _number(expected)
    if left is not None and right is not None:
        return (left > right) - (left < right)
    # ISO 8601 timestamps and other strings compare as text.
    if isinstance(actual, str) and isinstance(expected, str):
        return (actual > expected) - (actual < expected)
    return None
