"""Reading the envelopes a store would push from files: one JSON envelope, a JSON array of them,
or JSON lines (one envelope per line; .jsonl/.ndjson files are read line by line, never whole)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

LINE_SUFFIXES = frozenset({".jsonl", ".ndjson"})


@dataclass(frozen=True)
class FileItem:
    """One envelope to push, or why a piece of the file could not be read as JSON."""

    where: str
    data: Any = None
    error: str | None = None


class UnreadableFile(Exception):
    pass


def _open(path: str) -> TextIO:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise UnreadableFile(f"{path}: {exc.strerror or exc}") from None


def envelopes_count(path: str) -> int | None:
    """How many envelopes a file holds, for a progress bar; None when it cannot be known cheaply."""
    if path == "-":
        return None
    if Path(path).suffix.lower() in LINE_SUFFIXES:
        with _open(path) as handle:
            return sum(1 for line in handle if line.strip())
    return None


def envelopes_read(path: str) -> Iterator[FileItem]:
    handle = _open(path)
    try:
        if path != "-" and Path(path).suffix.lower() in LINE_SUFFIXES:
            yield from _lines(path, handle)
            return
        text = handle.read()
    finally:
        if handle is not sys.stdin:
            handle.close()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Several objects one after another is JSON lines; anything else is broken JSON.
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from _lines(path, text.splitlines())
            return
        raise UnreadableFile(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if isinstance(data, list):
        for index, item in enumerate(data):
            yield FileItem(where=f"{path}[{index}]", data=item)
    elif isinstance(data, dict) and isinstance(data.get("events"), list):
        for index, item in enumerate(data["events"]):
            yield FileItem(where=f"{path}[{index}]", data=item)
    else:
        yield FileItem(where=path, data=data)


def _lines(path: str, lines: Any) -> Iterator[FileItem]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield FileItem(where=where, data=json.loads(line))
        except json.JSONDecodeError as exc:
            yield FileItem(where=where, error=f"malformed JSON at column {exc.colno}: {exc.msg}")
