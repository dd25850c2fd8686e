"""The store-facing API: POST /events, POST /events/batch, GET /events, GET /events/<id>.

Views are thin: authenticate, parse, call the outbox or a selector, shape the reply. They live in
routing, not events, because accepting an event is storing and routing it (routing.outbox).
"""

from __future__ import annotations

import contextlib
import functools
import string
import threading
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from rest_framework.exceptions import NotFound as DrfNotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from events.errors import (
    BatchTooLarge,
    HubError,
    InvalidEnvelope,
    InvalidFilter,
    MalformedJson,
    NotFound,
    UnsupportedMediaType,
)
from events.messages import InvalidMessageName, message_canonical
from events.models import Event, EventStatus
from events.parsers import unsized_body_receive
from events.schema import EVENT_BATCH, EVENT_DETAIL, EVENT_LIST, EVENT_PUSH
from events.selectors import event_get, event_list
from events.services import IngestResult
from events.validation import envelope_validate, since_parse
from routing.outbox import event_accept, events_accept
from routing.selectors import event_deliveries_describe


def event_public(event: Event) -> dict[str, Any]:
    return {
        "event_id": str(event.uid),
        "message": event.message,
        "message_id": event.message_id,
        "status": event.status,
        "resource_key": event.resource_key,
        "created_at": event.created_at.isoformat(),
    }


def event_location(event: Event) -> str:
    return f"/events/{event.uid}"


def _accepted_body(result: IngestResult) -> dict[str, Any]:
    event = result.event
    return {
        "event_id": str(event.uid),
        "message": event.message,
        "message_id": event.message_id,
        "status": event.status,
        "duplicate": not result.created,
    }


class EventPagination(CursorPagination):
    """Newest first; a cursor stays valid while new events arrive (no offset drift)."""

    ordering = "-id"
    page_size_query_param = "limit"
    max_page_size = 500

    def __init__(self) -> None:
        self.page_size = settings.HUB_EVENTS_PAGE_SIZE

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw in (None, ""):
            return self.page_size
        # isdigit() alone lets '²' through, which int() refuses: ASCII digits only.
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= self.max_page_size:
            raise InvalidFilter(f"'limit' must be a whole number from 1 to {self.max_page_size}.", field="limit")
        return int(raw)

    def decode_cursor(self, request: Request) -> Any:
        """DRF's cursor, refused (400 naming it) unless it is one the hub could have written: short,
        and its position an event id. DRF hands any position to the query, where 'abc' is a 500."""
        encoded = request.query_params.get(self.cursor_query_param)
        well_formed = encoded is None or (0 < len(encoded) <= CURSOR_MAX_CHARS and set(encoded) <= _BASE64_CHARS)
        try:
            # DRF's base64 decoding skips characters outside the alphabet: '%%%' would be a first page.
            cursor = super().decode_cursor(request) if well_formed else None
        except DrfNotFound:
            cursor = None
        if encoded is not None and (cursor is None or not _event_id_valid(cursor.position)):
            # DRF answers 404 for a bad cursor; it is a bad query parameter, not a missing resource.
            raise InvalidFilter("'cursor' is not valid; use the 'next' or 'previous' link of a page.", field="cursor")
        return cursor


# The hub's cursors are a few dozen characters (position, offset, direction, in base64).
CURSOR_MAX_CHARS = 200
_BIGINT_MAX = 2**63 - 1
_BASE64_CHARS = frozenset(string.ascii_letters + string.digits + "+/=")


def _event_id_valid(position: str | None) -> bool:
    """No position (a first page) or a row id: ASCII digits (int() also takes '١٢' and ' 1_0 ')
    within the database's bigint."""
    if position is None:
        return True
    return position.isascii() and position.isdigit() and int(position) <= _BIGINT_MAX


def message_filter_parse(raw: str) -> str | None:
    """A message name (aliases become canonical) or 'resource:*'; '' and '*' mean every message."""
    name = raw.strip().lower()
    if name in ("", "*", "*:*"):
        return None
    wildcard = name.endswith(":*")
    try:
        # A wildcard's resource part is checked by the same rule as a full name.
        canonical = message_canonical(name[:-1] + "any" if wildcard else name)
    except InvalidMessageName as exc:
        raise InvalidFilter(str(exc).replace(":any'", ":*'"), field="message") from None
    return name if wildcard else canonical


def since_filter_parse(raw: str) -> datetime:
    since = since_parse(raw)
    if since is None:
        raise InvalidFilter(
            "'since' must be an ISO 8601 date-time or date, e.g. 2026-01-31T12:00:00Z or 2026-01-31.",
            field="since",
        )
    return since


def resource_key_filter_parse(raw: str) -> str | None:
    """A resource key to match exactly ('order:R104702249'); '' means any. PostgreSQL refuses NUL in
    a query parameter, so it is a bad filter, not a server error."""
    if "\x00" in raw:
        raise InvalidFilter("'resource_key' must not contain the NUL character.", field="resource_key")
    return raw or None


class JsonAlwaysNegotiation(DefaultContentNegotiation):
    """The hub speaks only JSON, so it answers JSON whatever Accept says: refusing a store's push
    with a 406 because its HTTP client sends `Accept: text/html` (or `application/xml`) would only
    lose the event."""

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:
        renderer = renderers[0]
        return renderer, renderer.media_type


class StoreApi(APIView):
    """Base for store-authenticated endpoints: JSON in, JSON out."""

    content_negotiation_class = JsonAlwaysNegotiation

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Authentication, permissions and rate limits, from the headers alone: a refused request's
        # body is never read (the metrics middleware, too, counts it without its body).
        super().initial(request, *args, **kwargs)
        if request.method in ("POST", "PUT", "PATCH"):
            content_type = request.content_type.split(";")[0].strip().lower()
            if content_type != "application/json":
                raise UnsupportedMediaType(
                    f"Content-Type must be application/json, not '{content_type or 'missing'}'.",
                    field="Content-Type",
                )
            unsized_body_receive(request)
            # DRF hands an empty body (or a chunked one, which carries no Content-Length) to the view
            # as {} without calling the parser; say what is wrong instead of "'message' is required".
            if request.META.get("CONTENT_LENGTH") in (None, "", "0"):
                raise MalformedJson(
                    "The body is empty; send a JSON envelope with a Content-Length header.", field="body"
                )


class EventCollectionApi(StoreApi):
    @EVENT_PUSH
    def post(self, request: Request) -> Response:
        with body_slot(request):
            return self._post(request)

    def _post(self, request: Request) -> Response:
        data = request.data
        if isinstance(data, list):
            return batch_response(request, data)
        result = event_accept(store=request.user, envelope=envelope_validate(data))
        body = _accepted_body(result)
        if result.created:
            return Response(body, status=202, headers={"Location": event_location(result.event)})
        return Response(body, status=200, headers={"Location": event_location(result.event)})

    @EVENT_LIST
    def get(self, request: Request) -> Response:
        params = request.query_params
        message = message_filter_parse(params.get("message", ""))
        status = params.get("status") or None
        if status and status not in EventStatus.values:
            raise InvalidFilter(f"'status' must be one of {', '.join(EventStatus.values)}.", field="status")
        since = since_filter_parse(params["since"]) if params.get("since") else None
        qs = event_list(
            store=request.user,
            message=message,
            status=status,
            since=since,
            resource_key=resource_key_filter_parse(params.get("resource_key", "")),
        )
        paginator = EventPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response([event_public(e) for e in page])


# Bodies from this size on parse into enough objects to count against the batch slots (a single
# order push is about 9 KB).
LARGE_BODY_BYTES = 64 * 1024


@functools.cache
def batch_slots(count: int) -> threading.BoundedSemaphore:
    """Large bodies a web process may parse and write at once: their parsed objects are many times
    the body, and every thread could hold one (settings.HUB_BATCH_CONCURRENCY)."""
    return threading.BoundedSemaphore(count)


def body_slot(request: Request) -> threading.BoundedSemaphore | contextlib.nullcontext[None]:
    """A batch slot for a large body, or one of unknown size (chunked); nothing for the rest."""
    try:
        size = int(request.META.get("CONTENT_LENGTH") or -1)
    except ValueError:
        size = -1
    if 0 <= size < LARGE_BODY_BYTES:
        return contextlib.nullcontext()
    return batch_slots(settings.HUB_BATCH_CONCURRENCY)


class EventBatchApi(StoreApi):
    @EVENT_BATCH
    def post(self, request: Request) -> Response:
        with body_slot(request):
            return self._post(request)

    def _post(self, request: Request) -> Response:
        data = request.data
        if isinstance(data, dict) and "events" in data:
            data = data["events"]
        if not isinstance(data, list):
            raise InvalidEnvelope(
                'A batch is a JSON array of envelopes, or an object {"events": [...]}.', field="events"
            )
        return batch_response(request, data)


def batch_response(request: Request, items: list[Any]) -> Response:
    """Each envelope is accepted or rejected on its own; one result per item, in order. The valid
    ones are accepted together (one insert for the batch), with the results one by one would give."""
    limit = settings.HUB_MAX_BATCH_SIZE
    if len(items) > limit:
        raise BatchTooLarge(f"The batch has {len(items)} events; the limit is {limit}.", field="events")
    if not items:
        raise InvalidEnvelope("The batch is empty.", field="events")
    results: dict[int, dict[str, Any]] = {}
    counts = {"accepted": 0, "duplicates": 0, "rejected": 0}
    valid: list[tuple[int, Any]] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, envelope_validate(item)))
        except HubError as exc:
            counts["rejected"] += 1
            results[index] = {"index": index, "status_code": exc.status_code, **exc.as_dict()}
    # One transaction for the whole batch: one durable commit instead of one per event, which is
    # most of what an event costs. Nothing is answered as accepted before the commit, and a
    # failed commit answers an error for the whole batch.
    with transaction.atomic():
        accepted = events_accept(store=request.user, envelopes=[e for _, e in valid]) if valid else []
    for (index, _), result in zip(valid, accepted, strict=True):
        counts["accepted" if result.created else "duplicates"] += 1
        results[index] = {"index": index, "status_code": 202 if result.created else 200, **_accepted_body(result)}
    return Response({**counts, "results": [results[i] for i in range(len(items))]}, status=200)


class EventDetailApi(StoreApi):
    @EVENT_DETAIL
    def get(self, request: Request, event_id: str) -> Response:
        event = event_get(store=request.user, event_id=event_id)
        if event is None:
            raise NotFound(f"No event '{event_id}' for this store.", field="event_id")
        body = event_public(event)
        body["payload"] = event.payload
        body["parent_event_id"] = str(event.parent.uid) if event.parent_id else None
        body.update(event_deliveries_describe(event))
        return Response(body)
