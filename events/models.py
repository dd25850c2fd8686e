"""What stores push: the stores themselves and the events they send."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import datetime
from typing import Any

import orjson
from django.db import models
from django.db.models.fields.json import KeyTransform
from django.db.models.query_utils import DeferredAttribute
from django.utils import timezone
from psycopg.types.json import Json, Jsonb

from events.ids import uuid7

TOKEN_PREFIX = "hub_"


def token_hash(token: str) -> str:
    """Tokens carry 256 random bits, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store(models.Model):
    name = models.CharField(max_length=100, unique=True)
    is_active = models.BooleanField(default=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_hint = models.CharField(
        max_length=16, editable=False, help_text="The first characters of the token, to tell tokens apart."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The token replaced by the last rotation keeps working until previous_token_expires_at.
    previous_token_hash = models.CharField(max_length=64, blank=True, default="", db_index=True, editable=False)
    previous_token_expires_at = models.DateTimeField(null=True, blank=True, editable=False)

    # DRF treats request.user as the authenticated principal; a store is one.
    is_authenticated = True
    is_anonymous = False

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def token_set_new(self) -> str:
        """Give the store a fresh token and return it in clear: the only time it is ever seen."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.token_hash = token_hash(token)
        self.token_hint = token[: len(TOKEN_PREFIX) + 6]
        return token

    def token_matches(self, token: str, *, now: datetime | None = None) -> bool:
        """The current token, or the previous one while its grace period lasts; constant-time."""
        digest = token_hash(token)
        current = hmac.compare_digest(self.token_hash, digest)
        previous = bool(self.previous_token_hash) and hmac.compare_digest(self.previous_token_hash, digest)
        if previous:
            expires = self.previous_token_expires_at
            previous = expires is not None and expires > (now or timezone.now())
        return current or previous


class EventStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    DELIVERING = "delivering", "Delivering"
    DELIVERED = "delivered", "Delivered"
    PARTIALLY_FAILED = "partially_failed", "Partially failed"
    FAILED = "failed", "Failed"
    UNROUTED = "unrouted", "Unrouted"


class EventSource(models.TextChoices):
    STORE = "store", "Pushed by a store"
    REPLY = "reply", "Returned by an endpoint"
    # A tick: the request a subscription's schedule sends to pull from its endpoint (routing.schedules).
    SCHEDULE = "schedule", "Made by a schedule"


# Types json.dumps would refuse are passed through, so they still fail there.
_ORJSON_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def payload_orjson(value: Any) -> bytes | None:
    """A payload as orjson writes it for its column, or None for what orjson cannot write."""
    try:
        return orjson.dumps(value, option=_ORJSON_STRICT)
    except orjson.JSONEncodeError:
        return None


def payload_dumps(value: Any) -> bytes | str:
    """A payload as JSON text for its json column: orjson, else json.dumps."""
    written = payload_orjson(value)
    return written if written is not None else json.dumps(value)


# Every ASCII digit as "0", so that a run of 19 (an integer that may not fit 64 bits, which orjson
# would read as a float) is a plain substring search: the regex `\d{19}` tried a match at every
# digit and took longer than orjson's whole read of a payload.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


def long_digits(text: str) -> bool:
    """Whether `text` holds 19 or more ASCII digits in a row. Digits of other scripts can only be
    in a JSON string, which either reader reads alike."""
    return _LONG_RUN in text.encode("utf-8", "surrogatepass").translate(_DIGITS_AS_ZERO)


class StoredPayload:
    """A payload as its column holds it, JSON text read back by the delivery claim, parsed on first
    use: the envelope format sends the text as it is (routing.formats), so most deliveries never
    need it as Python objects."""

    __slots__ = ("_field", "_value", "spliceable", "text")

    def __init__(self, text: str, field: PayloadField) -> None:
        self.text, self._field = text, field
        self._value: Any = _UNPARSED
        # Whether the text may go into an envelope as it is, once a render has looked
        # (routing.formats): a fan-out's requests share one payload and look once.
        self.spliceable: bool | None = None

    def value(self) -> Any:
        """The payload as PayloadField reads it, parsed once."""
        if self._value is _UNPARSED:
            self._value = self._field.from_db_value(self.text, None, None)
        return self._value

    def __repr__(self) -> str:
        return f"StoredPayload({self.text[:40]!r})"


_UNPARSED = object()


class PayloadAttribute(DeferredAttribute):
    """`event.payload`, parsed on first access when the row left it as a StoredPayload; a data
    descriptor so that the access always comes here."""

    def __get__(self, instance: Any, cls: Any = None) -> Any:
        value = super().__get__(instance, cls)
        if type(value) is StoredPayload:
            value = instance.__dict__[self.field.attname] = value.value()
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.field.attname] = value


def payload_stored(instance: Any, name: str = "payload") -> Any:
    """The instance's payload as it is held: a StoredPayload while unparsed, else the value, without
    parsing it."""
    value = instance.__dict__.get(name, _UNPARSED)
    return getattr(instance, name) if value is _UNPARSED else value


class PayloadField(models.JSONField):
    """A JSONField in a PostgreSQL `json` column (not `jsonb`), one parameter per row (docs/performance.md)."""

    descriptor_class = PayloadAttribute

    def from_db_lazy(self, value: Any, expression: Any, connection: Any) -> Any:
        """What the claim's row building reads instead of from_db_value: the text kept, parsed
        when first needed (routing.rows)."""
        if isinstance(value, str) and self.decoder is None:
            return StoredPayload(value, self)
        return self.from_db_value(value, expression, connection)

    def db_type(self, connection: Any) -> str | None:
        if connection.vendor == "postgresql":
            return "json"
        return super().db_type(connection)

    def get_placeholder(self, value: object, compiler: object, connection: object) -> str:
        return "%s"

    def get_db_prep_value(self, value: object, connection: Any, prepared: bool = False) -> object:
        adapted = super().get_db_prep_value(value, connection, prepared)
        if connection.vendor == "postgresql" and isinstance(adapted, Jsonb):
            # Sent as json, the column's type, so it is not parsed into jsonb and back.
            dumps = payload_dumps if adapted.dumps is json.dumps else adapted.dumps
            return Json(adapted.obj, dumps=dumps)
        return adapted

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        # orjson, except for long integers (read as floats) and what it refuses (NaN): json.loads.
        if (
            isinstance(value, str)
            and self.decoder is None
            and not isinstance(expression, KeyTransform)
            and not long_digits(value)
        ):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
        return super().from_db_value(value, expression, connection)


class Event(models.Model):
    uid = models.UUIDField(default=uuid7, unique=True, editable=False)
    store = models.ForeignKey(
        Store,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="events",
        help_text="The store that pushed it; empty for events returned by an endpoint.",
        # Covered by event_store_recent and the unique (store, message_id).
        db_index=False,
    )
    message = models.CharField(max_length=100, db_index=True)
    message_id = models.CharField(max_length=255)
    payload = PayloadField()
    # Indexed in Meta: db_index on a CharField adds a second, LIKE-only index nothing queries.
    resource_key = models.CharField(max_length=200, null=True, blank=True)
    source = models.CharField(max_length=10, choices=EventSource.choices, default=EventSource.STORE)
    origin = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="What sent it when it did not come from a store (e.g. 'subscription:12').",
    )
    # Indexed in Meta where set only (event_children): events pushed by stores have no parent.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children", db_index=False
    )
    depth = models.PositiveSmallIntegerField(default=0)
    # Looked up through event_status_created, which starts with it.
    status = models.CharField(max_length=20, choices=EventStatus.choices, default=EventStatus.QUEUED)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The push's W3C trace context, so delivery attempts join its trace; empty with tracing off.
    traceparent = models.CharField(max_length=55, blank=True, default="", editable=False)

    class Meta:
        ordering = ["-id"]
        # On PostgreSQL the table is partitioned by ranges of id (docs/storage.md): this constraint is
        # the primary key of events_event_key, kept by a trigger, and uid's uniqueness a plain index.
        constraints = [
            models.UniqueConstraint(fields=["store", "message_id"], name="event_unique_store_message_id"),
        ]
        indexes = [
            models.Index(fields=["store", "-id"], name="event_store_recent"),
            models.Index(fields=["status", "created_at"], name="event_status_created"),
            models.Index(fields=["resource_key"], name="event_resource_key"),
            # The admin finds an event by its message_id from any store.
            models.Index(fields=["message_id"], name="event_message_id"),
            # An event's children, and the check of this foreign key when an event is deleted.
            models.Index(fields=["parent"], name="event_children", condition=models.Q(parent__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.message} {self.message_id}"


class EventDescendants(models.Model):
    """How many events replies made under one root event, at any depth: what HUB_MAX_DESCENDANTS bounds.

    Not a column on Event: every status change locks the event's row, and batches would wait on it.
    """

    root = models.OneToOneField(Event, primary_key=True, on_delete=models.CASCADE, related_name="+")
    count = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.count} descendants of event {self.root_id}"
