"""gunicorn's own log lines (access and error) in the same JSON shape as the hub's, secrets masked.

gunicorn configures its loggers itself, outside Django's LOGGING, so gunicorn.conf.py names this
class as `logger_class`. An access line carries the request as fields, not as an Apache string,
so a log search can filter on status or duration.
"""

from __future__ import annotations

import traceback
from typing import Any

from gunicorn import glogging

from integrator.logfilters import SecretRedactionFilter
from integrator.logformat import JsonFormatter

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    """The fields of one access line, from gunicorn's atoms (see gunicorn.glogging.Logger.atoms)."""
    size = atoms.get("B")
    return {
        "remote_addr": atoms.get("h"),
        "method": atoms.get("m"),
        "path": atoms.get("U"),
        "query": atoms.get("q") or "",
        "status": int(atoms["s"]) if str(atoms.get("s", "")).isdigit() else atoms.get("s"),
        "response_bytes": size if isinstance(size, int) else 0,
        "duration_ms": round(int(atoms.get("D", 0)) / 1000, 3),
        "user_agent": atoms.get("a"),
    }


class JsonLogger(glogging.Logger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = JsonFormatter(_FORMAT)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)
                if not any(isinstance(f, SecretRedactionFilter) for f in handler.filters):
                    handler.addFilter(SecretRedactionFilter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:
            fields = access_fields(self.atoms(resp, req, environ, request_time))
            self.access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"], extra=fields)
        except Exception:  # noqa: BLE001 - a log line must never fail a request
            self.error(traceback.format_exc())
