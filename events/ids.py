"""Event ids: UUID version 7, time-ordered, so new ids go in at the right-hand end of their index."""

from __future__ import annotations

import os
import time
import uuid

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0x2 << 62
_RANDOM_B = (1 << 62) - 1


def uuid7() -> uuid.UUID:
    """A new version 7 UUID: 48-bit Unix milliseconds, version, 12 random bits, variant, 62 random bits."""
    random = int.from_bytes(os.urandom(10))  # 80 bits: 12 for rand_a, 62 for rand_b, 6 unused
    rand_a = (random >> 62) & 0xFFF
    value = (time.time_ns() // 1_000_000) << 80 | _VERSION_7 | rand_a << 64 | _VARIANT_RFC | (random & _RANDOM_B)
    return uuid.UUID(int=value)
