"""What the management commands share: who is acting, and the API's errors as CommandError."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError

from events.errors import HubError


def command_actor(command: str) -> str:
    """Who a write is logged as when it comes from a command: the command and the OS user."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
    return f"command:{command} ({user})"


@contextmanager
def hub_errors() -> Iterator[None]:
    """A refusal of the services (a bad value, an unknown name) as a one-line CommandError."""
    try:
        yield
    except HubError as exc:
        raise CommandError(f"{exc.field}: {exc.detail}" if exc.field else exc.detail) from None
