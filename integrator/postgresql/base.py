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
        # A `json` column (event payloads: events.models.PayloadField) read as its text, which the
        # field parses, as Django has psycopg do for jsonb; psycopg's own json loader would hand
        # the field a dict already parsed by the slower json.loads.
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
        """A cursor (wrapped as connection.cursor() wraps one) whose statements take $1, $2, ...
        placeholders and send the parameters apart from the text: for the hub's own INSERT of
        events, whose 8.5 KB payloads the default client-side binding would quote into the
        statement, and PostgreSQL then lex back out of it.

        Django turns psycopg's automatic preparing off (prepare_threshold None) for every other
        statement. `prepared` prepares this cursor's statements once per connection: PostgreSQL
        then neither parses nor plans the single-event INSERT again (a seventh of its time per
        push, docs/performance.md). A PgBouncer in transaction mode needs 1.21 or later with
        max_prepared_statements for that, or DB_PREPARED_STATEMENTS=0 (docs/operations.md)."""
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
