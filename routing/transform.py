"""A subscription's mapping from the hub's description of an event to the document its endpoint
expects, written in JSONata (docs/protocol.md says why that language).

A mapping is data, not code, but JSONata can still loop (recursive functions) or build a huge
result, and a step counter inside the evaluator does not stop a single built-in that runs long
(`$pad`, a regex) or allocates much. So every mapping runs in a separate process
(routing.transform_child): memory capped, no environment, no file writes, and killed when its
answer is later than the time limit. One such process per hub process, started on first use and
started again after a kill; a failed mapping is a TransformError that says where and why.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from routing.perprocess import PerProcess

_HEADER = struct.Struct(">I")
_CHILD = Path(__file__).with_name("transform_child.py")
# An expression longer than this is refused when it is saved: mappings are a page, not a program.
EXPRESSION_MAX_CHARS = 20_000
# What a frame may add to the mapped document (the answer's JSON around it).
_FRAME_OVERHEAD = 64 * 1024


@dataclass
class TransformError(Exception):
    """A mapping that failed: at which stage (parse, evaluate, result, limit), where in the
    expression (a character position, when known) and why."""

    stage: str
    reason: str
    position: int | None = None
    code: str | None = None
    expression: str = ""

    def __str__(self) -> str:
        where = ""
        if self.position is not None:
            where = f" at character {self.position}"
            snippet = _near(self.expression, self.position)
            if snippet:
                where += f" (near {snippet!r})"
        code = f" [{self.code}]" if self.code else ""
        stage = {"parse": "could not be read", "evaluate": "failed", "result": "gave an unusable result"}.get(
            self.stage, "was stopped"
        )
        return f"the transform {stage}{where}: {self.reason}{code}"


def _near(expression: str, position: int) -> str:
    if not expression:
        return ""
    start = max(0, position - 20)
    return expression[start : position + 10].replace("\n", " ")


def transform_run(
    expression: str,
    document: Any,
    *,
    seconds: float | None = None,
    output_max_bytes: int | None = None,
) -> str:
    """The mapped document as JSON text, or TransformError. Never waits longer than `seconds`
    (HUB_TRANSFORM_SECONDS) for the mapping, and never returns more than `output_max_bytes`."""
    seconds = settings.HUB_TRANSFORM_SECONDS if seconds is None else seconds
    limit = settings.HUB_TRANSFORM_OUTPUT_MAX_BYTES if output_max_bytes is None else output_max_bytes
    answer = _sandboxes.get().call(
        {"op": "eval", "expression": expression, "input": document, "max_output": limit},
        seconds=seconds,
        read_max=limit + _FRAME_OVERHEAD,
        expression=expression,
    )
    return answer["output"]


def transform_validate(expression: Any) -> None:
    """Raise ValueError with a sentence when `expression` is not a JSONata expression the hub can run."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("A transform subscription needs a JSONata expression.")
    if len(expression) > EXPRESSION_MAX_CHARS:
        raise ValueError(f"The transform is {len(expression)} characters; at most {EXPRESSION_MAX_CHARS}.")
    try:
        _sandboxes.get().call(
            {"op": "parse", "expression": expression},
            seconds=settings.HUB_TRANSFORM_SECONDS,
            read_max=_FRAME_OVERHEAD,
            expression=expression,
        )
    except TransformError as exc:
        text = str(exc)
        raise ValueError(text[:1].upper() + text[1:]) from None


class _Sandbox:
    """The mapping process of this hub process: one request at a time, killed when it is late."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def call(self, request: dict[str, Any], *, seconds: float, read_max: int, expression: str) -> dict[str, Any]:
        try:
            frame = json.dumps(request, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise TransformError("input", f"the event could not be given to the mapping: {exc}") from None
        with self._lock:
            process = self._started()
            try:
                process.stdin.write(_HEADER.pack(len(frame)) + frame)  # type: ignore[union-attr]
                process.stdin.flush()  # type: ignore[union-attr]
                answer = self._answer_read(process, seconds=seconds, read_max=read_max)
            except BrokenPipeError:
                self._stop()
                raise TransformError("limit", "the mapping process ended unexpectedly (out of memory?)") from None
            except TransformError:
                self._stop()
                raise
        error = answer.get("error")
        if error:
            raise TransformError(
                stage=str(error.get("stage") or "evaluate"),
                reason=str(error.get("reason") or "unknown error"),
                position=error.get("position") if isinstance(error.get("position"), int) else None,
                code=error.get("code") if isinstance(error.get("code"), str) else None,
                expression=expression,
            )
        return answer

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(  # noqa: S603 - our own script, fixed arguments
                [sys.executable, "-I", str(_CHILD), str(settings.HUB_TRANSFORM_MEMORY_MAX_BYTES)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={},
                cwd="/",
                close_fds=True,
            )
        return self._process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def _answer_read(self, process: subprocess.Popen[bytes], *, seconds: float, read_max: int) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        fd = process.stdout.fileno()  # type: ignore[union-attr]
        header = _read(fd, _HEADER.size, deadline, seconds)
        size = _HEADER.unpack(header)[0]
        if size > read_max:
            raise TransformError("result", f"the result is over the limit of {read_max - _FRAME_OVERHEAD} bytes")
        return json.loads(_read(fd, size, deadline, seconds))


def _read(fd: int, size: int, deadline: float, seconds: float) -> bytes:
    """Exactly `size` bytes from `fd` before `deadline`, else TransformError."""
    chunks: list[bytes] = []
    left = size
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TransformError("limit", f"the mapping took longer than {seconds:g}s and was stopped")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise TransformError("limit", "the mapping process ended unexpectedly (out of memory?)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


_sandboxes: PerProcess[_Sandbox] = PerProcess(_Sandbox)
