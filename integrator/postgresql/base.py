"""Django's PostgreSQL backend, with a cheaper connection health check.

Django's CONN_HEALTH_CHECKS cost a `SELECT 1` round trip per request. A connection the server
closed has something to read while it should be idle (its last error, or the end of the stream), so
the socket is polled first and `SELECT 1` runs only when something is there.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base, operations
from psycopg.types.string import TextLoader

# A prepare_threshold (executions before psycopg prepares a statement by itself) never reached.
PREPARE_ONLY_WHEN_ASKED = 2**62


class DatabaseOperations(operations.DatabaseOperations):
    def last_executed_query(self, cursor: Any, sql: str, params: Any) -> str | None:
        # psycopg records the text it ran only for a statement it did not prepare; the
        # server-bound cursor sends the text as given, so that is what ran (the query log and
        # CaptureQueriesContext read it here).
        return super().last_executed_query(cursor, sql, params) or sql


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        # `json` columns read as text for the field to parse with orjson, as Django does for jsonb.
        connection.adapters.register_loader("json", TextLoader)
        if settings.DB_PREPARED_STATEMENTS and connection.prepare_threshold is None:
            # psycopg prepares nothing while the threshold is None, not even what a cursor asks
            # for; a threshold no statement reaches leaves the rest unprepared, as Django wants.
            connection.prepare_threshold = PREPARE_ONLY_WHEN_ASKED
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

    def cursor_server_bound(self, *, prepared: bool = False) -> Any:
        """A cursor with $n placeholders that sends parameters apart from the text, so large payloads
        are not quoted into the statement. `prepared` prepares its statements once per connection
        (a PgBouncer in transaction mode needs 1.21+ with max_prepared_statements)."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            return self._prepare_cursor((PreparedRawCursor if prepared else psycopg.RawCursor)(self.connection))


class PreparedRawCursor(psycopg.RawCursor):
    """A server-bound cursor that prepares what it executes (psycopg keeps the prepared statement
    per connection, by its text), whatever the connection's prepare_threshold says."""

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)
