"""Values a process remembers for a while: each entry expires `ttl` seconds after it was put (by
time.monotonic), and the whole map is dropped at `cap` entries, a backstop on its size."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, *, cap: int = 10_000) -> None:
        self._cap = cap
        # key -> (until when, value); each entry replaced whole, so a thread never sees half of one.
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        hit = self._items.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._items) >= self._cap and key not in self._items:
            self._items.clear()
        self._items[key] = (time.monotonic() + ttl, value)

    def add(self, key: K, value: V, ttl: float) -> bool:
        """Put unless a live entry is there, as a cache's add: True when it was put."""
        if self.get(key) is not None:
            return False
        self.put(key, value, ttl)
        return True

    def discard(self, key: K) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()
