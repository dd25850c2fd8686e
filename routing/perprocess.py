"""One object per process for background threads, made again in a forked child (which has no thread)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        value, pid = self._value, self._pid
        if value is None or pid != os.getpid():
            with self._lock:
                if self._value is None or self._pid != os.getpid():
                    self._value, self._pid = self._make(), os.getpid()
                value = self._value
        return value  # type: ignore[return-value]
