"""Encryption at rest for subscription secrets (Fernet, keys from HUB_ENCRYPTION_KEYS; docs/security.md)."""

from __future__ import annotations

import base64
import hashlib
from functools import cache, lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Every Fernet token starts with the version byte 0x80, which base64 spells "gAAAAA".
TOKEN_PREFIX = "gAAAAA"


class SecretUndecryptable(Exception):
    """A stored secret none of the configured keys can open."""


@cache
def _fernet_for(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        derived = hashlib.sha256(b"hub-encryption-key:" + secret_key.encode()).digest()
        keys = (base64.urlsafe_b64encode(derived).decode(),)
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"HUB_ENCRYPTION_KEYS holds a key that is not a Fernet key ({exc}); make one with Fernet.generate_key()."
        ) from None


def fernet() -> MultiFernet:
    return _fernet_for(tuple(settings.HUB_ENCRYPTION_KEYS), settings.SECRET_KEY)


def secret_encrypt(plain: str) -> str:
    return fernet().encrypt(plain.encode("utf-8")).decode("ascii")


def secret_decrypt(stored: str) -> str:
    """The plain secret; each stored token is decrypted once per process and keys (a claim reads
    three per endpoint). A secret changed is a new token, so never served stale."""
    return _decrypted(tuple(settings.HUB_ENCRYPTION_KEYS), settings.SECRET_KEY, stored)


# Plain secrets kept by their token: the process holds the keys that open them anyway, so this
# adds no exposure. Keyed by the keys too: a key removed opens nothing it opened before.
@lru_cache(maxsize=4096)
def _decrypted(keys: tuple[str, ...], secret_key: str, stored: str) -> str:
    try:
        return _fernet_for(keys, secret_key).decrypt(stored.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeEncodeError):
        raise SecretUndecryptable(
            "A stored secret cannot be decrypted with HUB_ENCRYPTION_KEYS; was a key removed too early?"
        ) from None


def secret_is_encrypted(stored: str) -> bool:
    return stored.startswith(TOKEN_PREFIX)
