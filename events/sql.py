"""Every statement events writes by hand: the INSERT of events, which every push runs.

One style, as routing.sql: a function per statement returning its text for a shape, cached; tables
and model-derived columns quoted; %s placeholders, which numbered() rewrites as $1, $2, ... for the
server-bound cursor of the PostgreSQL backend (integrator/postgresql), where the parameters travel
apart from the text; SQLite takes the %s text as it is.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import connections
from django.db.models import Field

from events.models import Event


def server_bound(connection: Any) -> bool:
    """Whether the backend has the server-bound cursor ($n placeholders)."""
    return hasattr(connection, "cursor_server_bound")


def insert_cursor(connection: Any, *, prepared: bool = False) -> Any:
    """The server-bound cursor where the backend has one (prepared when asked: the statement every
    push runs), or the connection's own cursor."""
    return connection.cursor_server_bound(prepared=prepared) if server_bound(connection) else connection.cursor()


def for_cursor(connection: Any, sql: str) -> str:
    """A statement's text for the cursor insert_cursor gives."""
    return numbered(sql) if server_bound(connection) else sql


@functools.lru_cache(maxsize=256)
def numbered(sql: str) -> str:
    """%s placeholders as PostgreSQL's $1, $2, ... (no hand-written statement has another % sign)."""
    parts = sql.split("%s")
    return "".join(part + (f"${index}" if index < len(parts) else "") for index, part in enumerate(parts, 1))


@functools.cache
def event_insert_fields() -> list[Field]:
    """The fields event_insert writes, in its column order: every concrete one but the id."""
    return [f for f in Event._meta.concrete_fields if not f.primary_key and not f.generated]


# Kept for the batch sizes seen most recently: a store sending every size up to
# HUB_MAX_BATCH_SIZE cannot make a process keep them all.
@functools.lru_cache(maxsize=64)
def event_insert(alias: str, rows: int, *, skip_conflicts: bool) -> str:
    """INSERT INTO events_event (event_insert_fields) VALUES (...) x rows, optionally skipping rows
    whose (store, message_id) or uid is taken, RETURNING id, message_id. Params: each event's
    values, as events.services.event_values gives them."""
    quote = connections[alias].ops.quote_name
    meta = Event._meta
    fields = event_insert_fields()
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    return "INSERT INTO {} ({}) VALUES {}{} RETURNING {}, {}".format(
        quote(meta.db_table),
        ", ".join(quote(f.column) for f in fields),
        ", ".join([row] * rows),
        " ON CONFLICT DO NOTHING" if skip_conflicts else "",
        quote(meta.pk.column),
        quote(meta.get_field("message_id").column),
    )
