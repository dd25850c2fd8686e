"""Django's PostgreSQL backend, with a cheaper connection health check.

With CONN_HEALTH_CHECKS Django runs `SELECT 1` on a reused connection before the first query of
every request: one round trip of the two a push makes (docs/performance.md, third round). A
connection the server has closed (restart, failover, pg_terminate_backend, idle timeout, a proxy
cut) has something to read while it should be idle: the server's last error message, or the end
of the stream. So the socket is polled first, without waiting; only when something is there does
the real `SELECT 1` decide. What neither check catches without a timeout is a peer that vanished
without a word (a blackholed network): `SELECT 1` would hang on it as the request's own query does.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg.types.string import TextLoader


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        # A `json` column (event payloads: events.models.PayloadField) read as its text, which the
        # field parses, as Django has psycopg do for jsonb; psycopg's own json loader would hand
        # the field a dict already parsed by the slower json.loads.
        connection.adapters.register_loader("json", TextLoader)
        return connection

    def is_usable(self) -> bool:
        connection = self.connection
        if connection is None or connection.closed:
            return False
        try:
            # poll, not select: select() refuses descriptors above 1023, which a busy process has.
            poller = select.poll()
            poller.register(connection.fileno(), select.POLLIN)
            quiet = not poller.poll(0)
        except (OSError, ValueError):
            quiet = False  # the real check decides
        return quiet or super().is_usable()

    def cursor_server_bound(self) -> Any:
        """A cursor (wrapped as connection.cursor() wraps one) whose statements take $1, $2, ...
        placeholders and send the parameters apart from the text: for the hub's own INSERT of
        events, whose 8.5 KB payloads the default client-side binding would quote into the
        statement, and PostgreSQL then lex back out of it. Nothing is prepared: Django turns
        psycopg's automatic preparing off (prepare_threshold None), which a PgBouncer in
        transaction mode needs (docs/operations.md)."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            return self._prepare_cursor(psycopg.RawCursor(self.connection))
