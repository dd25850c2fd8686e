"""Every statement routing writes by hand, for the hot path where the ORM took longer to build
a statement than the database to run it.

One style: a function per statement, returning its text for a shape (a count of ids, a vendor),
cached; tables and model-derived column lists quoted, hand-written columns bare; %s placeholders
(numbered(), events.sql's, rewrites them as $1, $2, ... for the server-bound cursor). Where PostgreSQL and
SQLite differ, both variants are here side by side, chosen by the `postgresql` argument.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import connection
from django.db.models import Field, Model

from events import sql as events_sql
from events.models import Event, Store
from routing.models import (
    DELIVERY_OPEN_STATES,
    DELIVERY_UNFINISHED_STATES,
    Attempt,
    Delivery,
    DeliveryState,
    Notification,
    ReturnedObject,
    Subscription,
)

_OPEN = ", ".join(f"'{state}'" for state in DELIVERY_OPEN_STATES)
_UNFINISHED = ", ".join(f"'{state}'" for state in DELIVERY_UNFINISHED_STATES)
_DELIVERING = f"'{DeliveryState.DELIVERING}'"


def placeholders(count: int) -> str:
    """`%s, %s, ...`: the parameters of an IN list of `count` values."""
    return ", ".join(["%s"] * count)


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def model_columns(model: type[Model], alias: str, fields: tuple[str, ...] | None = None) -> str:
    """Every concrete column of `model` (or those of the attnames `fields`), in field order,
    qualified by `alias`."""
    chosen = [f for f in model._meta.concrete_fields if fields is None or f.attname in fields]
    return ", ".join(f"{alias}.{connection.ops.quote_name(f.column)}" for f in chosen)


# What a claimed delivery's send, record, replies, schedule ticks and outcome log read of it, its
# event and its event's store (routing.rows.row_instance defers the rest, loaded on first use):
# each column left out is one value fewer to load and set per delivery. In field order.
CLAIMED_DELIVERY_FIELDS = (
    "id",
    "event_id",
    "subscription_id",
    "state",
    "resource_key",
    "attempt_count",
    "next_attempt_at",
    "claim",
    "send_alone",
    "replay_of_id",
)
CLAIMED_EVENT_FIELDS = (
    "id",
    "uid",
    "store_id",
    "message",
    "message_id",
    "payload",
    "resource_key",
    "source",
    "origin",
    "parent_id",
    "depth",
    "traceparent",
)
CLAIMED_STORE_FIELDS = ("id", "name")


def claimed_only(*stores: str) -> list[str]:
    """The claimed columns as QuerySet.only() names for Delivery with select_related("event",
    "event__store", *stores): SQLite's claims read rows back through the ORM, and read no more than
    PostgreSQL's single statement does (a column read later costs a query per delivery)."""

    def names(model: type[Model], prefix: str, attnames: tuple[str, ...]) -> list[str]:
        by_attname = {f.attname: f.name for f in model._meta.concrete_fields}
        return [prefix + by_attname[attname] for attname in attnames]

    return [
        *names(Delivery, "", CLAIMED_DELIVERY_FIELDS),
        *names(Event, "event__", CLAIMED_EVENT_FIELDS),
        *names(Store, "event__store__", CLAIMED_STORE_FIELDS),
        *(name for store in stores for name in names(Store, store + "__", CLAIMED_STORE_FIELDS)),
    ]


numbered = events_sql.numbered


def bound_cursor() -> Any:
    """The server-bound cursor on PostgreSQL (events.sql.insert_cursor), the connection's own elsewhere.

    For statements of a batch's many parameters (its ids, its attempts' rows): Django's cursor binds
    on the client, writing each value into the text as a literal, and psycopg splits a text of
    over 50 parameters anew on every execution; the server-bound one sends the values apart."""
    return events_sql.insert_cursor(connection)


def bound(statement: str) -> str:
    """A statement's text for bound_cursor()."""
    return events_sql.for_cursor(connection, statement)


# The pump's read of its endpoint -----------------------------------------------------------------


@functools.cache
def subscription_with_store() -> str:
    """The subscription with its store's columns (a LEFT JOIN: none when it has none). Params: id."""
    return f"""
    SELECT {model_columns(Subscription, "sub")}, {model_columns(Store, "st")}
    FROM {table(Subscription)} sub LEFT JOIN {table(Store)} st ON st.id = sub.store_id
    WHERE sub.id = %s"""


# The claim ---------------------------------------------------------------------------------------

# Batches of an endpoint being sent now, each with at most one request on the wire (a delivering
# row without a claim is its own request). Params: subscription, now.
_IN_FLIGHT = """
    SELECT COUNT(DISTINCT COALESCE(f.claim, -f.id)) FROM {delivery} f
    WHERE f.subscription_id = %s AND f.state = {delivering} AND f.lease_expires_at > %s"""

# The oldest unfinished delivery to the endpoint of the resource `alias`.`key`: the one whose turn
# it is. Asked in (resource, id) order, which only delivery_holding has: asked as MIN(id),
# PostgreSQL may walk the primary key from the table's first row. Params: subscription.
_HEAD = """
        SELECT e.id FROM {delivery} e
        WHERE e.subscription_id = %s AND e.state IN ({unfinished}) AND e.resource_key >= {alias}.{key}
        ORDER BY e.resource_key, e.id LIMIT 1"""

# The deliveries a batch may take now, found without walking an order's queue: the first due ones
# in claim order (a window of two batches), those of them nothing holds back; and only when that
# window is clogged by deliveries held back (one order's long chain), the oldest unfinished
# delivery of each resource and the due deliveries without a resource key. A backlog of many
# orders fills its batch from the window; one order's chain costs the same few looks at any length.
# Params: candidates_params().
_CANDIDATES = """
    WITH RECURSIVE
    win AS (
        SELECT w.id, w.resource_key FROM {delivery} w
        WHERE w.subscription_id = %s AND w.state IN ({open}) AND w.next_attempt_at <= %s
        ORDER BY w.next_attempt_at, w.id LIMIT %s),
    ready AS (
        SELECT w.id FROM win w WHERE w.resource_key IS NULL OR w.id IN (
            SELECT ({head_r}) FROM (SELECT DISTINCT resource_key FROM win) r)),
    clogged AS (SELECT (SELECT COUNT(*) FROM win) >= %s AND (SELECT COUNT(*) FROM ready) < %s AS yes),
    resources(k) AS (
        SELECT MIN(h.resource_key) FROM {delivery} h
        WHERE h.subscription_id = %s AND h.state IN ({unfinished}) AND (SELECT yes FROM clogged)
        UNION ALL
        SELECT (
            SELECT MIN(h.resource_key) FROM {delivery} h
            WHERE h.subscription_id = %s AND h.state IN ({unfinished}) AND h.resource_key > resources.k)
        FROM resources WHERE resources.k IS NOT NULL)
    SELECT id FROM ready
    UNION
    SELECT ({head_k}) FROM resources WHERE resources.k IS NOT NULL
    UNION
    SELECT id FROM (
        SELECT u.id FROM {delivery} u
        WHERE u.subscription_id = %s AND u.state IN ({open}) AND u.resource_key IS NULL
        AND u.next_attempt_at <= %s AND (SELECT yes FROM clogged)
        ORDER BY u.next_attempt_at, u.id LIMIT %s) unkeyed"""


def _names(**extra: str) -> dict[str, str]:
    return {
        "delivery": table(Delivery),
        "subscription": table(Subscription),
        "open": _OPEN,
        "unfinished": _UNFINISHED,
        "delivering": _DELIVERING,
        **extra,
    }


def candidates_params(sub_id: int, at: object, batch: int) -> list[object]:
    window = 2 * batch
    return [sub_id, at, window, sub_id, window, batch, sub_id, sub_id, sub_id, sub_id, at, batch]


# Each head's run: the unfinished deliveries of its resource that follow it, in id order, read in
# the index of unfinished ones (delivery_holding) from the head's entry on, never more than a batch;
# kept up to the first one not open and due (a running AND): a resource's deliveries go in order
# or not at all. Asked as the entries after the head's within its resource: asked as
# resource_key = and id >, PostgreSQL walked the primary key from the head through every
# endpoint's later rows. {bound}: how many to read at most.
_FOLLOWING = """
            SELECT {columns} FROM {delivery} {a}
            WHERE {a}.subscription_id = %s AND {a}.state IN ({unfinished})
            AND ({a}.resource_key, {a}.id) > (r.resource_key, r.id) AND {a}.resource_key <= r.resource_key
            ORDER BY {a}.resource_key, {a}.id LIMIT {bound}"""

# The batch: every head (place 0) in claim order (turn), then each head's run, its second
# delivery (place 1) in the heads' turn, then the third...: a backlog of many orders takes their
# heads as before, one order's chain fills the batch.
_BATCH = """
    SELECT t.id FROM (
        SELECT r.id, 0 AS place, r.turn FROM ranked r
        UNION ALL
        SELECT f.id, f.place, f.turn FROM following f WHERE f.ready
    ) t
    ORDER BY t.place, t.turn LIMIT %s"""


@functools.lru_cache(maxsize=64)
def sendable(*, postgresql: bool) -> str:
    """The SELECT of the ids a batch takes: the heads (each resource's oldest unfinished delivery,
    when it is due), in claim order, at most a batch; then the run of open, due deliveries that
    follow each head, up to a batch in all. Params: sendable_params().

    PostgreSQL locks the heads it takes (SKIP LOCKED: another claim's are not ours to take), and
    a run only follows a head this claim holds, so no two claims take parts of one resource."""
    names = _names()
    names["head_r"] = _HEAD.format(**_names(alias="r", key="resource_key"))
    names["head_k"] = _HEAD.format(**_names(alias="resources", key="k"))
    candidates = _CANDIDATES.format(**names)
    if postgresql:
        # The candidates' rows looked up by their keys, one by one: joined as IN (subquery),
        # PostgreSQL scanned every row of the endpoint to match them.
        following = _FOLLOWING.format(**_names(a="e", columns="e.id, e.state, e.next_attempt_at", bound="%s - r.heads"))
        return f"""
    WITH heads AS MATERIALIZED (
        SELECT d.id, d.resource_key, d.next_attempt_at
        FROM unnest(ARRAY({candidates})) AS c(id) JOIN {table(Delivery)} d ON d.id = c.id
        WHERE d.state IN ({_OPEN}) AND d.next_attempt_at <= %s
        ORDER BY d.next_attempt_at, d.id LIMIT %s
        FOR UPDATE OF d SKIP LOCKED),
    ranked AS (
        SELECT h.id, h.resource_key, ROW_NUMBER() OVER (ORDER BY h.next_attempt_at, h.id) AS turn,
            COUNT(*) OVER () AS heads
        FROM heads h),
    following AS (
        SELECT n.id, n.place, r.turn, n.ready FROM ranked r CROSS JOIN LATERAL (
            SELECT e.id, ROW_NUMBER() OVER w AS place,
                bool_and(e.state IN ({_OPEN}) AND e.next_attempt_at <= %s) OVER w AS ready
            FROM ({following}) e
            WINDOW w AS (ORDER BY e.id)) n
        WHERE r.resource_key IS NOT NULL){_BATCH}"""
    # SQLite has no LATERAL: each head's run is a correlated IN list on the primary key (a LIMIT
    # there cannot name the head's columns: a run reads at most a batch), its window partitioned
    # by head.
    following = _FOLLOWING.format(**_names(a="x", columns="x.id", bound="%s"))
    return f"""
    WITH heads AS (
        SELECT d.id, d.resource_key, d.next_attempt_at FROM {table(Delivery)} d
        WHERE d.id IN ({candidates}) AND d.subscription_id = %s AND d.state IN ({_OPEN}) AND d.next_attempt_at <= %s
        ORDER BY d.next_attempt_at, d.id LIMIT %s),
    ranked AS (
        SELECT h.id, h.resource_key, ROW_NUMBER() OVER (ORDER BY h.next_attempt_at, h.id) AS turn
        FROM heads h),
    following AS (
        SELECT e.id, ROW_NUMBER() OVER w AS place, r.turn,
            MIN(e.state IN ({_OPEN}) AND e.next_attempt_at <= %s) OVER w AS ready
        FROM ranked r JOIN {table(Delivery)} e ON e.id IN ({following})
        WHERE r.resource_key IS NOT NULL
        WINDOW w AS (PARTITION BY r.id ORDER BY e.id)){_BATCH}"""


def sendable_params(sub_id: int, at: object, batch: int, *, postgresql: bool) -> list[object]:
    """The parameters of sendable(), in its order."""
    heads = [*candidates_params(sub_id, at, batch)] + ([] if postgresql else [sub_id]) + [at, batch]
    # The due check of a run, the endpoint, the most a run reads, then the batch.
    return [*heads, at, sub_id, batch if postgresql else batch - 1, batch]


@functools.lru_cache(maxsize=64)
def claim(*, postgresql: bool, limited: bool) -> str:
    """The claiming UPDATE: the sendable rows become delivering under a claim token and a lease,
    if the endpoint is enabled and (`limited`) below its in-flight limit.

    PostgreSQL: rows another worker is claiming are skipped (SKIP LOCKED), and the rows taken come
    back with their events and stores in the same statement (a CTE named `claimed`: the rest of
    the query sees the table as it was before the UPDATE, so the rows are the UPDATE's own).
    SQLite: the ids taken, read by the ORM after.
    Params: lease until, claim, now, sendable's, subscription, and when `limited` subscription,
    now, limit; on PostgreSQL then the subscription again, whose parameters as they are now end
    every row (another pump's reply may have merged some since this pump read its endpoint)."""
    taken = sendable(postgresql=postgresql)
    within_limit = f" AND ({_IN_FLIGHT.format(**_names())}) < %s" if limited else ""
    update = """
        UPDATE {delivery} SET state = {delivering}, attempt_count = attempt_count + 1,
            lease_expires_at = %s, claim = %s, updated_at = %s
        WHERE {taken} AND state IN ({open})
        AND EXISTS (SELECT 1 FROM {subscription} s WHERE s.id = %s AND s.is_enabled){within_limit}
        RETURNING {returning}"""
    if not postgresql:
        return update.format(**_names(taken=f"id IN ({taken})", within_limit=within_limit, returning="id"))
    update = update.format(
        **_names(
            taken=f"id = ANY(ARRAY({taken}))",
            within_limit=within_limit,
            returning=model_columns(Delivery, table(Delivery), CLAIMED_DELIVERY_FIELDS),
        )
    )
    return numbered(f"""WITH claimed AS ({update})
    SELECT {model_columns(Delivery, "claimed", CLAIMED_DELIVERY_FIELDS)},
        {model_columns(Event, "e", CLAIMED_EVENT_FIELDS)}, {model_columns(Store, "s", CLAIMED_STORE_FIELDS)},
        (SELECT parameters FROM {table(Subscription)} WHERE id = %s)
    FROM claimed JOIN {table(Event)} e ON e.id = claimed.event_id
    LEFT JOIN {table(Store)} s ON s.id = e.store_id
    ORDER BY claimed.next_attempt_at, claimed.id""")


@functools.cache
def subscription_lock() -> str:
    """PostgreSQL, before a limited claim: the endpoint's row, NO KEY (claims queue up on each other,
    not on the pushes inserting its deliveries). Params: subscription. Numbered."""
    return numbered(f"SELECT 1 FROM {table(Subscription)} WHERE id = %s FOR NO KEY UPDATE")


@functools.cache
def leases_renew() -> str:
    """A claim's lease extended, fenced on its token. Params: until, subscription, claim."""
    return (
        f"UPDATE {table(Delivery)} SET lease_expires_at = %s"
        f" WHERE subscription_id = %s AND state = {_DELIVERING} AND claim = %s"
    )


# Recording ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def deliveries_finish(columns: tuple[str, ...], count: int, claims: int = 1) -> str:
    """The outcome of `count` deliveries still delivering under one of `claims` claims (a fan-out
    records several endpoints' at once; a token is drawn at random per claim, so a delivery that
    changed hands holds none of them). Params: one value per column, the ids, the delivering
    state, the claims."""
    quote = connection.ops.quote_name
    return (
        f"UPDATE {table(Delivery)} SET {', '.join(f'{quote(column)} = %s' for column in columns)}"
        f" WHERE id IN ({placeholders(count)}) AND state = %s AND claim IN ({placeholders(claims)})"
    )


@functools.cache
def attempt_fields() -> list[Field]:
    """The fields of an attempt attempts_insert writes: every concrete one but id."""
    return [f for f in Attempt._meta.concrete_fields if not f.primary_key and not f.generated]


@functools.cache
def attempts_per_insert() -> int:
    """Rows per attempts_insert: within SQLite's oldest limit of 999 parameters, as bulk_create keeps to."""
    return 999 // len(attempt_fields())


@functools.lru_cache(maxsize=64)
def attempts_insert(count: int, *, replace: bool) -> str:
    """`count` attempts, as Attempt.objects.bulk_create writes them; with `replace`, one whose
    (delivery, number) is taken (the sweeper's guess for a delivery that changed hands) gets this
    row's values instead, as bulk_create(update_conflicts=True) does. The same text on PostgreSQL
    and SQLite. Params: each row's attempt_fields(), prepared."""
    quote = connection.ops.quote_name
    fields = attempt_fields()
    row = "(" + placeholders(len(fields)) + ")"
    statement = "INSERT INTO {} ({}) VALUES {}".format(
        table(Attempt), ", ".join(quote(f.column) for f in fields), ", ".join([row] * count)
    )
    if replace:
        keys = ("delivery_id", "number")
        updated = ", ".join(f"{quote(f.column)} = EXCLUDED.{quote(f.column)}" for f in fields if f.column not in keys)
        statement += f" ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {updated}"
    return statement


@functools.lru_cache(maxsize=64)
def events_lock(count: int) -> str:
    """PostgreSQL: lock `count` events FOR NO KEY UPDATE, in the ids' order, each looked up by key
    (deliveries reference events, and a plain FOR UPDATE would also block their inserts and
    updates). Returns nothing worth reading: a read in the same statement would use the snapshot
    taken before the locks were waited for (events_with_deliveries reads after). Params: the event
    ids, sorted."""
    return (
        f"SELECT 1 FROM unnest(ARRAY[{placeholders(count)}]::bigint[]) AS k(id) CROSS JOIN LATERAL ("
        f"SELECT 1 FROM {table(Event)} x WHERE x.id = k.id FOR NO KEY UPDATE) e"
    )


@functools.lru_cache(maxsize=64)
def events_with_deliveries(count: int, *, postgresql: bool) -> str:
    """Each of `count` events with its deliveries (or none). Params: the event ids."""
    if not postgresql:
        return (
            f"SELECT e.id, e.status, d.subscription_id, d.id, d.state, d.attempt_count"
            f" FROM {table(Event)} e LEFT JOIN {table(Delivery)} d ON d.event_id = e.id"
            f" WHERE e.id IN ({placeholders(count)})"
        )
    # Each event and its deliveries looked up by key, whatever the statistics say: as a join,
    # partitions ANALYZE had not yet seen were read whole (tests/routing/test_stale_statistics.py).
    return (
        f"SELECT e.id, e.status, d.subscription_id, d.id, d.state, d.attempt_count"
        f" FROM unnest(ARRAY[{placeholders(count)}]::bigint[]) AS k(id) CROSS JOIN LATERAL ("
        f"SELECT x.id, x.status FROM {table(Event)} x WHERE x.id = k.id OFFSET 0) e"
        f" LEFT JOIN LATERAL (SELECT y.subscription_id, y.id, y.state, y.attempt_count FROM {table(Delivery)} y"
        f" WHERE y.event_id = e.id OFFSET 0) d ON true"
    )


@functools.lru_cache(maxsize=64)
def events_status_set(count: int) -> str:
    """Params: the status, the event ids."""
    return f"UPDATE {table(Event)} SET status = %s WHERE id IN ({placeholders(count)})"


@functools.lru_cache(maxsize=64)
def returned_objects_claim(count: int) -> str:
    """Record `count` objects an endpoint returned; the rows written come back, a pair already
    recorded (by another reply) is skipped. Params per row: subscription, key, digest, created at."""
    columns = ", ".join(connection.ops.quote_name(name) for name in ("subscription_id", "key", "digest", "created_at"))
    unique_on = ", ".join(connection.ops.quote_name(name) for name in ("subscription_id", "key", "digest"))
    values = ", ".join(f"({placeholders(4)})" for _ in range(count))
    return (
        f"INSERT INTO {table(ReturnedObject)} ({columns}) VALUES {values}"
        f" ON CONFLICT ({unique_on}) DO NOTHING RETURNING {connection.ops.quote_name('key')}, "
        f"{connection.ops.quote_name('digest')}"
    )


# The fan-out -------------------------------------------------------------------------------------

# The endpoint's oldest unfinished delivery of the resource of `d` (see _HEAD), correlated.
_FANOUT_HEAD = """
    SELECT h.id FROM {delivery} h
    WHERE h.subscription_id = d.subscription_id AND h.state IN ({unfinished}) AND h.resource_key >= d.resource_key
    ORDER BY h.resource_key, h.id LIMIT 1"""

# The named deliveries that may go now: due, their endpoint enabled and below its in-flight limit
# (a subscription's own, else the default; 0 for none), each its resource's head at its endpoint.
# Params: the ids, now, the default limit, now, the default limit.
_FANOUT_SENDABLE = """
    SELECT d.id FROM {delivery} d JOIN {subscription} s ON s.id = d.subscription_id
    WHERE d.id {ids} AND d.state IN ({open}) AND d.next_attempt_at <= %s AND s.is_enabled
    AND (d.resource_key IS NULL OR d.id = ({head}))
    AND (COALESCE(s.max_in_flight, %s) = 0 OR (
        SELECT COUNT(DISTINCT COALESCE(f.claim, -f.id)) FROM {delivery} f
        WHERE f.subscription_id = d.subscription_id AND f.state = {delivering} AND f.lease_expires_at > %s
    ) < COALESCE(s.max_in_flight, %s))"""


@functools.cache
def fanout_lock() -> str:
    """PostgreSQL, before a fan-out's claim: the rows of the named deliveries' endpoints that have an
    in-flight limit, NO KEY (as subscription_lock), in id order, so that two fan-outs never wait on
    each other in a cycle and a pump, which holds one such lock at a time, never closes one.
    Params: the delivery ids (an array), the default limit. Numbered."""
    return numbered(f"""
        SELECT 1 FROM {table(Subscription)} WHERE id IN (
            SELECT subscription_id FROM {table(Delivery)} WHERE id = ANY(%s::bigint[]))
        AND COALESCE(max_in_flight, %s) <> 0
        ORDER BY id FOR NO KEY UPDATE""")


@functools.lru_cache(maxsize=64)
def fanout_claim(count: int, *, postgresql: bool) -> str:
    """A fan-out's claiming UPDATE: those of the named deliveries that may go now become delivering,
    each under a claim of its endpoint's own (the task's token plus the endpoint's id: the
    in-flight limit counts claims per endpoint, and the lease heartbeat renews one per endpoint).
    PostgreSQL: rows another worker is claiming are skipped, and the rows taken come back with
    their subscriptions and the subscriptions' stores, in endpoint order; an event and its store
    come with its first row only (NULLs on the others): one payload on the wire per event, not one
    per endpoint. Of a delivery, its event and the stores, only what a pump's claim reads back
    (CLAIMED_*_FIELDS); the subscription whole, as a pump reads its endpoint. SQLite: the ids taken
    (`count` of them named).
    Params: lease until, the claim token, now, then the ids (PostgreSQL: one array; SQLite: each),
    now, the default limit, now, the default limit."""
    names = _names()
    if postgresql:
        ids = "= ANY(%s::bigint[])"
        token = "%s::bigint"
    else:
        ids = f"IN ({placeholders(count)})"
        token = "%s"
    sendable = _FANOUT_SENDABLE.format(**_names(ids=ids, head=_FANOUT_HEAD.format(**names)))
    update = f"""
        UPDATE {table(Delivery)} SET state = {_DELIVERING}, attempt_count = attempt_count + 1,
            lease_expires_at = %s, claim = {token} + subscription_id, updated_at = %s"""
    if not postgresql:
        return f"{update} WHERE id IN ({sendable}) RETURNING id"
    return numbered(f"""WITH claimed AS (
        {update} WHERE id = ANY(ARRAY({sendable} FOR UPDATE OF d SKIP LOCKED))
        RETURNING {model_columns(Delivery, table(Delivery), CLAIMED_DELIVERY_FIELDS)}),
    ranked AS (SELECT claimed.*,
        row_number() OVER (PARTITION BY claimed.event_id ORDER BY claimed.subscription_id, claimed.id) AS nth
        FROM claimed)
    SELECT {model_columns(Delivery, "ranked", CLAIMED_DELIVERY_FIELDS)},
        {model_columns(Event, "e", CLAIMED_EVENT_FIELDS)}, {model_columns(Store, "es", CLAIMED_STORE_FIELDS)},
        {model_columns(Subscription, "sub")}, {model_columns(Store, "ss", CLAIMED_STORE_FIELDS)}
    FROM ranked LEFT JOIN {table(Event)} e ON e.id = ranked.event_id AND ranked.nth = 1
    LEFT JOIN {table(Store)} es ON es.id = e.store_id
    JOIN {table(Subscription)} sub ON sub.id = ranked.subscription_id
    LEFT JOIN {table(Store)} ss ON ss.id = sub.store_id
    ORDER BY ranked.subscription_id, ranked.id""")


@functools.lru_cache(maxsize=64)
def endpoints_due_first(count: int, *, postgresql: bool) -> str:
    """The oldest deliveries due now at each of `count` endpoints, at most a given number each, as
    (event, delivery, endpoint, next attempt): after a fan-out, what its claim held back or a push
    coalesced into its message. Each endpoint's read in the index of open ones (delivery_open_due),
    in a pump's order, which the fourth column gives: its turn among the endpoint's rows.
    PostgreSQL: a LATERAL look per endpoint (one UNION ALL branch each took 10 ms to plan on a
    partitioned table). Params: PostgreSQL: the ids (an array), now, how many at most; SQLite: for
    each endpoint its id, now, how many at most."""
    one = (
        "SELECT event_id, id, subscription_id, next_attempt_at FROM {delivery}"
        " WHERE subscription_id = {endpoint} AND state IN ({open}) AND next_attempt_at <= %s"
        " ORDER BY next_attempt_at, id LIMIT %s"
    )
    if postgresql:
        look = one.format(**_names(endpoint="s.id"))
        return f"SELECT d.* FROM unnest(%s::bigint[]) AS s(id) CROSS JOIN LATERAL ({look}) AS d"
    return " UNION ALL ".join([f"SELECT * FROM ({one.format(**_names(endpoint='%s'))}) AS d"] * count)


def endpoints_due_first_params(ids: list[int], at: object, most: int, *, postgresql: bool) -> list[object]:
    """The parameters of endpoints_due_first(), in its order."""
    return [ids, at, most] if postgresql else [v for i in ids for v in (i, at, most)]


# The outbox --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def event_with_deliveries(alias: str, count: int, notes: int = 0) -> str:
    """PostgreSQL: one statement writes an event and its `count` deliveries, atomic in autocommit:
    WITH event AS (events.sql.event_insert) INSERT INTO delivery (event_id, delivery_fields())
    VALUES ((SELECT id FROM event), ...) x count RETURNING event_id, id. VALUES straight into the
    table, so that PostgreSQL takes every parameter's type from its column. Params: the event's
    values (events.services.event_values), then each delivery's delivery_fields(). Numbered.

    With `notes`, the event's notifications (routing.departures) too, then each with its
    notification_fields(): every INSERT is a WITH of its own, and each row returned is led by 0
    for a delivery or 1 for a notification."""
    inserts = [_rows_for_event(Delivery, delivery_fields(), count)] if count else []
    if not notes:
        return numbered(f"WITH event AS ({events_sql.event_insert(alias, 1, skip_conflicts=False)}) {inserts[0]}")
    inserts.append(_rows_for_event(Notification, notification_fields(), notes))
    kinds = [0, 1] if count else [1]
    withs = ", ".join(f"rows{kind} AS ({insert})" for kind, insert in zip(kinds, inserts, strict=True))
    selects = " UNION ALL ".join(f"SELECT {kind}, event_id, id FROM rows{kind}" for kind in kinds)
    return numbered(f"WITH event AS ({events_sql.event_insert(alias, 1, skip_conflicts=False)}), {withs} {selects}")


def _rows_for_event(model: type[Model], fields: list[Field], count: int) -> str:
    quote = connection.ops.quote_name
    row = "((SELECT id FROM event), " + ", ".join(["%s"] * len(fields)) + ")"
    return "INSERT INTO {} ({}) VALUES {} RETURNING event_id, id".format(
        table(model),
        ", ".join(quote(f.column) for f in [model._meta.get_field("event"), *fields]),
        ", ".join([row] * count),
    )


@functools.lru_cache(maxsize=64)
def deliveries_insert(count: int) -> str:
    """`count` deliveries of stored events, the ids back in row order (bulk_create compiled the same
    statement on every batch, and a group of pushes is one). Params per row: the event, then each
    of delivery_fields()."""
    quote = connection.ops.quote_name
    fields = [Delivery._meta.get_field("event"), *delivery_fields()]
    row = f"({placeholders(len(fields))})"
    return (
        f"INSERT INTO {table(Delivery)} ({', '.join(quote(f.column) for f in fields)})"
        f" VALUES {', '.join([row] * count)} RETURNING id"
    )


@functools.cache
def notification_fields() -> list[Field]:
    """The fields of a notification event_with_deliveries writes: every concrete one but id and event."""
    return [
        f for f in Notification._meta.concrete_fields if not f.primary_key and not f.generated and f.name != "event"
    ]


@functools.cache
def delivery_fields() -> list[Field]:
    """The fields of a delivery event_with_deliveries writes: every concrete one but id and event."""
    return [f for f in Delivery._meta.concrete_fields if not f.primary_key and not f.generated and f.name != "event"]


@functools.lru_cache(maxsize=64)
def subscriptions_kept(count: int, *, postgresql: bool) -> str:
    """Which of `count` subscriptions still exist, locked against deletion until the transaction
    ends on PostgreSQL (FOR KEY SHARE: a claim's FOR NO KEY UPDATE does not wait for it). Params: ids."""
    lock = " FOR KEY SHARE" if postgresql else ""
    return f"SELECT id FROM {table(Subscription)} WHERE id IN ({placeholders(count)}){lock}"


# The admin ---------------------------------------------------------------------------------------


@functools.cache
def message_names() -> str:
    """The distinct message names stored, by a loose index scan (one index probe per name) instead
    of SELECT DISTINCT, which reads every row of a large hub. No params."""
    events = table(Event)
    return f"""
    WITH RECURSIVE names(message) AS (
        SELECT MIN(message) FROM {events}
        UNION ALL
        SELECT (SELECT MIN(message) FROM {events} WHERE message > names.message)
        FROM names WHERE names.message IS NOT NULL
    )
    SELECT message FROM names WHERE message IS NOT NULL"""
