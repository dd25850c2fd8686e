"""Credentials of the management API (ops/manage): staff keys, apart from store tokens."""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from events.models import token_hash

KEY_PREFIX = "hubm_"

# What a key may do; a write scope does not imply the read one (a CI job that only applies a file
# may be given exactly what it needs).
SCOPES = (
    "stores:read",
    "stores:write",
    "subscriptions:read",
    "subscriptions:write",
    "deliveries:write",
)


# Management keys are hashed as store tokens are: 256 random bits, a plain SHA-256.
key_hash = token_hash


def scopes_validate(scopes: object) -> None:
    """Raise ValueError with a sentence when `scopes` is not a non-empty list of known scopes."""
    if not isinstance(scopes, list) or not scopes:
        raise ValueError(f"Give at least one scope: {', '.join(SCOPES)}.")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"Unknown scope(s) {', '.join(map(str, unknown))}; known: {', '.join(SCOPES)}.")


class ManagementKey(models.Model):
    name = models.CharField(max_length=100, unique=True, help_text="Who or what uses it, e.g. 'ci-apply'.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_hint = models.CharField(max_length=16, editable=False, help_text="The first characters of the key.")
    scopes = models.JSONField(default=list, help_text=f"Any of: {', '.join(SCOPES)}.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    # DRF treats request.user as the authenticated principal; a key is one.
    is_authenticated = True
    is_anonymous = False

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def key_set_new(self) -> str:
        """Give the key a fresh secret and return it in clear: the only time it is ever seen."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        self.key_hash = key_hash(key)
        self.key_hint = key[: len(KEY_PREFIX) + 6]
        return key

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])

    def clean(self) -> None:
        try:
            scopes_validate(self.scopes)
        except ValueError as exc:
            raise ValidationError({"scopes": str(exc)}) from None
