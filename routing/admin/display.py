"""How the admin shows things: state badges, pretty JSON, masked secrets."""

from __future__ import annotations

import json
from typing import Any

from django.utils.html import format_html
from django.utils.safestring import SafeString

MASK = "••••••••"


def secret_mask(value: str | None, *, keep: int = 4) -> str:
    """A secret as the admin may show it: its kind (the 'whsec_' prefix) and its last characters,
    enough to tell two apart, never enough to use one."""
    if not value:
        return "—"
    prefix = value.split("_", 1)[0] + "_" if value.startswith(("whsec_", "hub_")) else ""
    if len(value) - len(prefix) <= keep * 4:
        return prefix + MASK
    return prefix + MASK + value[-keep:]


def badge(value: str, label: str) -> SafeString:
    """A coloured label for a state or status, the same colour everywhere (static/routing/admin.css)."""
    return format_html('<span class="hub-badge hub-{}">{}</span>', value or "none", label)


def json_pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
