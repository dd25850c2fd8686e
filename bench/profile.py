"""Summarise py-spy raw profiles (`bash bench/run --profile DIR`): `python -m bench.profile DIR`.

For each role (web, worker) it prints the share of wall-clock samples (idle included) spent in
each frame, inclusive, for the frames that explain the time: waiting on PostgreSQL, on Redis, on the
subscriber, JSON work, and the hub's own functions.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

# A frame as py-spy writes it: "function (path/to/module.py:line)".
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def profile_load(paths: list[Path]) -> tuple[Counter[str], int]:
    inclusive: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            samples = int(count)
            total += samples
            for name in {frame_name(f) for f in stack.split(";")[1:]}:
                inclusive[name] += samples
    return inclusive, total


INTERESTING = (
    "events/",
    "routing/",
    "integrator/",
    "psycopg",
    "redis/",
    "kombu/",
    "requests/",
    "orjson",
    "json/",
    "rest_framework/views.py",
    "django/db/transaction.py",
    "commit",
    "execute",
)


# The frame one unit of work runs under: shares of it say where a request or a delivery spends its
# time, whatever the idle threads and processes around it did.
ROOTS = {
    "web": "APIView.dispatch (rest_framework/views.py)",
    "worker": "deliveries_pump_task (routing/tasks.py)",
}


def main() -> None:
    directory = Path(sys.argv[1])
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    for role in ("web", "worker"):
        paths = sorted(directory.glob(f"{role}-*.txt"))
        if not paths:
            continue
        inclusive, total = profile_load(paths)
        root = inclusive.get(ROOTS[role], 0) or total
        print(
            f"\n## {role}: {len(paths)} processes, {total} samples (wall clock, idle included); "
            f"{root} in `{ROOTS[role]}`\n"
        )
        print(f"| of all | of {ROOTS[role].split(' ')[0]} | frame |\n|---:|---:|---|")
        shown = 0
        for name, samples in inclusive.most_common():
            if not any(marker in name for marker in INTERESTING):
                continue
            print(f"| {100 * samples / total:5.1f}% | {100 * samples / root:5.1f}% | `{name}` |")
            shown += 1
            if shown >= limit:
                break


if __name__ == "__main__":
    main()
