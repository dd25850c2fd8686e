"""The process a subscription's JSONata mapping runs in (routing.transform starts it): it reads
requests from stdin and writes answers to stdout, one length-prefixed JSON frame each.

It imports nothing of the hub and runs with an empty environment, so a mapping sees no setting or
secret; its memory is capped (RLIMIT_AS) and it may write no file. Its time is the parent's to
limit: the parent kills it when an answer is late, which no expression can outlast.
"""

from __future__ import annotations

import json
import resource
import struct
import sys
from collections import OrderedDict
from typing import Any

import jsonata

_HEADER = struct.Struct(">I")
_COMPILED_MAX = 64


def _limits(memory_bytes: int) -> None:
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _read_exact(stream: Any, size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def _frame_read(stream: Any) -> Any:
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(stream, _HEADER.unpack(header)[0])
    return None if body is None else json.loads(body)


def _frame_write(stream: Any, value: Any) -> None:
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _problem(stage: str, exc: BaseException) -> dict[str, Any]:
    """Where (the expression's character position, when JSONata knows it) and why."""
    code = getattr(exc, "error", None)
    position = getattr(exc, "location", None)
    if isinstance(exc, MemoryError):
        reason = "the mapping ran out of memory (HUB_TRANSFORM_MEMORY_MAX_BYTES)"
    elif isinstance(exc, RecursionError):
        reason = "the mapping nests or recurses too deep"
    else:
        reason = str(exc) or type(exc).__name__
    return {
        "stage": stage,
        "code": code if isinstance(code, str) else None,
        "position": position if isinstance(position, int) and position >= 0 else None,
        "reason": reason[:500],
    }


def _answer(request: dict[str, Any], compiled: OrderedDict[str, Any]) -> dict[str, Any]:
    expression = request["expression"]
    program = compiled.get(expression)
    if program is None:
        try:
            program = jsonata.Jsonata(expression)
        except Exception as exc:  # noqa: BLE001 - every parse failure is the expression's, reported
            return {"error": _problem("parse", exc)}
        compiled[expression] = program
        while len(compiled) > _COMPILED_MAX:
            compiled.popitem(last=False)
    else:
        compiled.move_to_end(expression)
    if request.get("op") == "parse":
        return {"ok": True}
    try:
        result = program.evaluate(request.get("input"))
    except Exception as exc:  # noqa: BLE001 - a mapping's failure is reported, never fatal
        return {"error": _problem("evaluate", exc)}
    if result is None:
        return {"error": {"stage": "result", "reason": "the mapping produced nothing (no value matched)"}}
    try:
        text = json.dumps(result, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return {"error": {"stage": "result", "reason": f"the result is not JSON: {str(exc)[:300]}"}}
    limit = int(request.get("max_output") or 0)
    size = len(text.encode("utf-8"))
    if limit and size > limit:
        return {"error": {"stage": "result", "reason": f"the result is {size} bytes, over the limit of {limit}"}}
    return {"ok": True, "output": text}


def main() -> None:
    _limits(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    compiled: OrderedDict[str, Any] = OrderedDict()
    while True:
        request = _frame_read(stdin)
        if request is None:
            return
        try:
            answer = _answer(request, compiled)
        except MemoryError as exc:
            compiled.clear()
            answer = {"error": _problem("evaluate", exc)}
        _frame_write(stdout, answer)


if __name__ == "__main__":
    main()
