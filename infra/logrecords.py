"""Many lines from one logging call: a batch's outcome lines (routing.close.outcomes_log, one per
delivery) made from one LogRecord, copied for each.

Logger.info walks the stack to find its caller and builds every record from scratch (the file's
base name, the level's name, the thread's and process's names and ids): a few µs a line, the same
for every line of a batch but its time and its `extra=` fields. records_log does that once and
copies it, then hands each record to the logger's filters and handlers as Logger.info does: the
same records, so the same lines (tests/ops/test_logging.py compares them).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

# The time fields are set as LogRecord.__init__ sets them up to Python 3.12 (3.13 counts in
# nanoseconds); on another version every line goes through Logger.log.
_TIME_AS_FLOAT = sys.version_info < (3, 13)


def records_log(logger: logging.Logger, level: int, msg: str, extras: Sequence[Mapping[str, Any]]) -> None:
    """`logger.log(level, msg, extra=extra)` for each of `extras` in turn, each record noting the
    caller's line, as if it had called logger.log itself."""
    if not extras or not logger.isEnabledFor(level):
        return
    if not _copyable(logger):
        for extra in extras:
            logger.log(level, msg, extra=extra, stacklevel=2)
        return
    path, line, function, _ = logger.findCaller(False, 2)
    common = logger.makeRecord(logger.name, level, path, line, msg, (), None, function).__dict__
    taken = {"message", "asctime", *common}
    for extra in extras:
        if not taken.isdisjoint(extra):
            # Logger.makeRecord's refusal, for the first such key.
            raise KeyError(f"Attempt to overwrite {next(k for k in extra if k in taken)!r} in LogRecord")
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(common)
        created = time.time()
        fields["created"] = created
        fields["msecs"] = int((created - int(created)) * 1000) + 0.0
        fields["relativeCreated"] = (created - logging._startTime) * 1000
        fields.update(extra)
        logger.handle(record)


def _copyable(logger: logging.Logger) -> bool:
    """Whether a record made once is what each line's own making would give: LogRecord itself, made
    by Logger's makeRecord (a factory or a subclass may put anything on it, per call)."""
    return (
        _TIME_AS_FLOAT
        and logging.getLogRecordFactory() is logging.LogRecord
        and type(logger).makeRecord is logging.Logger.makeRecord
    )
