"""The JSON log line: python-json-logger's orjson formatter, writing the same lines with less work
per record, which a worker pays once per delivery (routing.close.outcomes_log).

Two shortcuts, each taken only where it cannot change a line: `asctime`'s date and time written
once per second (the milliseconds still per record), and a record's fields gathered without a
rename lookup per field when no renaming, default, static field or timestamp is configured.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter


class JsonFormatter(OrjsonFormatter):
    """OrjsonFormatter, the same output (tests/ops/test_logging.py compares the two)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (whole second, its text) of the last record formatted: a tuple, replaced whole, so a
        # thread reads a pair that belongs together.
        self._second_text: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        if datefmt or self.converter is not time.localtime or not self.default_msec_format:
            return super().formatTime(record, datefmt)
        # localtime() takes the whole second below a time, as floor does.
        second = math.floor(record.created)
        cached = self._second_text
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format, time.localtime(second)))
            self._second_text = cached
        return self.default_msec_format % (cached[1], record.msecs)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        configured = self.defaults or self.static_fields or self.rename_fields or self.rename_fields_keep_missing
        if configured or self.timestamp:
            super().add_fields(log_data, record, message_dict)
            return
        # BaseJsonFormatter.add_fields with every rename the identity: the required fields, the
        # logged dict's, then the record's own (merge_record_extra's test, in the record's order).
        fields = record.__dict__
        for name in self._required_fields:
            log_data[name] = fields.get(name)
        log_data.update(message_dict)
        skip = self._skip_fields
        for key, value in fields.items():
            if key not in skip and not (hasattr(key, "startswith") and key.startswith("_")):
                log_data[key] = value
