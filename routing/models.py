"""Where events go: subscriptions, one delivery per event x subscription, its attempts, and the
notifications endpoints send back."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from events.instances import instance_new
from events.models import Event, Store
from routing.fields import EncryptedJSONField, EncryptedTextField


def signing_secret_new() -> str:
    """A Standard Webhooks secret: 'whsec_' + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def subscription_token_new() -> str:
    return secrets.token_urlsafe(24)


def parameters_validate(parameters: Any) -> None:
    """Raise ValueError with a sentence when `parameters` is not a list of {"name", "value"} objects."""
    if parameters in (None, ""):
        return
    if not isinstance(parameters, list):
        raise ValueError('Parameters must be a list, e.g. [{"name": "api_key", "value": "..."}].')
    seen: set[str] = set()
    for index, item in enumerate(parameters, start=1):
        if not isinstance(item, Mapping):
            raise ValueError(f"Parameter {index} must be an object with 'name' and 'value'.")
        unknown = sorted(set(item) - {"name", "value"})
        if unknown:
            raise ValueError(f"Parameter {index} has unknown key(s) {', '.join(unknown)}; use name and value.")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Parameter {index} needs a 'name' (a non-empty string).")
        if "value" not in item:
            raise ValueError(f"Parameter {index} ('{name}') needs a 'value'.")
        if name in seen:
            raise ValueError(f"Parameter {index} repeats the name '{name}'; each name may appear once.")
        seen.add(name)


class HttpMethod(models.TextChoices):
    AUTO = "", "By message (POST for new, PUT for updated/canceled)"
    POST = "POST", "POST"
    PUT = "PUT", "PUT"
    PATCH = "PATCH", "PATCH"


class PayloadFormat(models.TextChoices):
    ENVELOPE = "envelope", "Envelope: {message, message_id, payload} (the hub's own; older Spree endpoints)"
    FLAT = "flat", "Flat: {request_id, <object>, parameters} to a path per message (newer Spree endpoints)"
    TRANSFORM = "transform", "Transform: the JSONata mapping below"


class FilterMode(models.TextChoices):
    ALL = "all", "All filters must match"
    ANY = "any", "Any filter may match"


# What an admin, the management API or an applied file sets on a subscription; the hub makes and
# rotates its secrets, and its standing (failing_since, ...) is the hub's to change.
SUBSCRIPTION_EDITABLE_FIELDS: tuple[str, ...] = (
    "name",
    "url",
    "store",
    "receive_own_events",
    "message_types",
    "filters",
    "filter_mode",
    "parameters",
    "payload_format",
    "paths",
    "transform",
    "object_messages",
    "http_method",
    "timeout_seconds",
    "max_in_flight",
    "retry_enabled",
    "retry_schedule",
    "is_enabled",
    "disabled_reason",
)


class Subscription(models.Model):
    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=500)
    message_types = models.JSONField(
        default=list, help_text='Message names or wildcards, e.g. ["order:new", "shipment:*"] or ["*"].'
    )
    filters = models.JSONField(
        default=list,
        blank=True,
        help_text='Content filters: [{"path": "order.channel", "op": "eq", "value": "spree"}].',
    )
    filter_mode = models.CharField(max_length=3, choices=FilterMode.choices, default=FilterMode.ALL)
    # Endpoints take their credentials here (netguard refuses them in the URL), so encrypted at
    # rest like the token and secrets; Python sees the list.
    parameters = EncryptedJSONField(
        default=list, blank=True, help_text='Sent as payload.parameters: [{"name": ..., "value": ...}].'
    )
    # What an object the endpoint returns by plural type becomes (routing.returned_objects).
    object_messages = models.JSONField(
        default=dict,
        blank=True,
        help_text='The message each returned type makes, e.g. {"orders": "order:updated"}; a type not named '
        "makes <type>:new the first time an object is seen, <type>:updated after.",
    )
    # Sent as X-Hub-Token / X-Augury-Token: as good as a password to the endpoint, so encrypted at
    # rest like the signing secret (HUB_ENCRYPTION_KEYS); Python sees it in clear.
    token = EncryptedTextField(default=subscription_token_new)
    # Encrypted at rest (HUB_ENCRYPTION_KEYS); Python sees the clear whsec_ secret.
    signing_secret = EncryptedTextField(default=signing_secret_new)
    # The secret replaced by the last rotation: deliveries are signed with it too until it expires,
    # so an endpoint can switch to the new secret without rejecting anything in between.
    previous_signing_secret = EncryptedTextField(blank=True, default="", editable=False)
    previous_signing_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    http_method = models.CharField(max_length=6, choices=HttpMethod.choices, default=HttpMethod.AUTO, blank=True)
    # What a delivery's body and headers look like (routing.formats), and where under the URL
    # each message goes: endpoints of the newer Spree generation route by path.
    payload_format = models.CharField(max_length=10, choices=PayloadFormat.choices, default=PayloadFormat.ENVELOPE)
    paths = models.JSONField(
        default=dict,
        blank=True,
        help_text='A path under the URL per message: {"order:new": "/add_order", "order:*": "/{verb}_order", '
        '"*": ""}. Placeholders {resource}, {action}, {verb} (add, update, cancel). Empty: the URL as it is; '
        "a flat subscription defaults to /{verb}_{resource}.",
    )
    transform = models.TextField(
        blank=True,
        default="",
        help_text="For the transform format: a JSONata expression from the hub's description of the event "
        "({message, message_id, event_id, store, payload, parameters}) to the document the endpoint expects.",
    )
    timeout_seconds = models.FloatField(default=10.0)
    # How many deliveries to this endpoint may be on the wire at once, so that a slow or dead
    # endpoint holds at most this many worker slots and never starves the others.
    max_in_flight = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Deliveries sent to this endpoint at the same time; empty uses the hub's "
        "HUB_SUBSCRIPTION_MAX_IN_FLIGHT, 0 means no limit.",
    )
    is_enabled = models.BooleanField(default=True, db_index=True)
    disabled_reason = models.CharField(max_length=200, blank=True, default="")
    retry_enabled = models.BooleanField(default=True)
    retry_schedule = models.JSONField(
        null=True,
        blank=True,
        help_text="Seconds to wait before each retry; empty uses the hub's schedule.",
    )
    store = models.ForeignKey(
        Store,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="subscriptions",
        help_text="The store this endpoint belongs to: its own events are not sent back to it.",
    )
    receive_own_events = models.BooleanField(default=False)
    # When the current run of failed attempts began; an endpoint failing for too long is disabled.
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def previous_signing_secret_active(self, now: datetime | None = None) -> str:
        """The previous secret while its grace lasts, else ""."""
        expires = self.previous_signing_secret_expires_at
        if not self.previous_signing_secret or expires is None:
            return ""
        return self.previous_signing_secret if (now or timezone.now()) < expires else ""

    def clean(self) -> None:
        """The admin form's check: each field's problem in one sentence, on that field."""
        from routing.formats import paths_validate
        from routing.matching import filter_mode_validate, filters_validate, message_types_validate
        from routing.retry import schedule_validate
        from routing.returned_types import object_messages_validate

        checks = (
            ("message_types", message_types_validate, self.message_types),
            ("filters", filters_validate, self.filters),
            ("filter_mode", filter_mode_validate, self.filter_mode),
            ("retry_schedule", schedule_validate, self.retry_schedule),
            ("parameters", parameters_validate, self.parameters),
            ("paths", paths_validate, self.paths),
            ("object_messages", object_messages_validate, self.object_messages),
        )
        errors: dict[str, str] = {}
        for field, check, value in checks:
            try:
                check(value)
            except ValueError as exc:
                errors[field] = str(exc)
        if self.url:
            from routing.transport.netguard import subscription_url_validate

            # http(s) only, a host, no credentials, and (while the SSRF guard is on) no loopback,
            # private or metadata destination; deliveries are checked again on every connection.
            try:
                subscription_url_validate(self.url)
            except ValidationError as exc:
                errors["url"] = exc.messages[0]
        if self.payload_format == PayloadFormat.TRANSFORM or self.transform:
            from routing.transform import transform_validate

            try:
                transform_validate(self.transform)
            except ValueError as exc:
                errors["transform"] = str(exc)
        if self.payload_format not in PayloadFormat.values:
            errors["payload_format"] = f"The format must be one of {', '.join(PayloadFormat.values)}."
        # Well under the Celery task time limit, which must never cut an attempt short.
        if self.timeout_seconds is not None and not 0 < self.timeout_seconds <= 120:
            errors["timeout_seconds"] = "The timeout must be more than 0 and at most 120 seconds."
        if errors:
            raise ValidationError(errors)


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERING = "delivering", "Delivering"
    DELIVERED = "delivered", "Delivered"
    RETRYING = "retrying", "Retrying"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# States a worker may still pick up.
DELIVERY_OPEN_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)
# Not over yet: open or on the wire. An earlier such delivery holds back later ones of the same
# resource and endpoint, and keeps its event's status open.
DELIVERY_UNFINISHED_STATES = (*DELIVERY_OPEN_STATES, DeliveryState.DELIVERING)
DELIVERY_FINAL_STATES = (DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.CANCELLED)


class Delivery(models.Model):
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    # Looked up (and its foreign key checked) through delivery_subscription_state, which starts with it.
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    state = models.CharField(max_length=12, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    # Copied from the event so that ordering checks need no join.
    resource_key = models.CharField(max_length=200, null=True, blank=True)
    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Which batch holds the delivery while it is delivering (routing.pump): a worker's outcome counts
    # only for its own claim, and an endpoint's in-flight limit counts distinct claims.
    claim = models.BigIntegerField(null=True, blank=True, editable=False)
    # Sent in a batch of its own until it gets an answer: it was in a batch whose worker died before
    # recording it (routing.sweeper), and only a batch of one tells which delivery was on the wire.
    send_alone = models.BooleanField(default=False, db_default=False, editable=False)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    # A replay is a fresh delivery of the same event to the same subscription, sent on request.
    # Indexed in Meta where set only (delivery_replays): nearly every delivery has none.
    replay_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="replays",
        editable=False,
        db_index=False,
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        # On PostgreSQL partitioned by ranges of id, drawn from the events' sequence; there the
        # constraint below cannot be unique and has no index, as nothing reads one (docs/storage.md).
        constraints = [
            # Routing makes one delivery per (event, subscription); replays are the deliberate extras.
            models.UniqueConstraint(
                fields=["event", "subscription"],
                condition=models.Q(replay_of__isnull=True),
                name="delivery_unique_event_subscription",
            ),
        ]
        indexes = [
            # Every delivery not delivered: the queue's counts and lag (routing.backlog), and a
            # state filter. Delivered ones, nearly all of history, never write to it.
            models.Index(
                fields=["state", "next_attempt_at"], name="delivery_due", condition=~models.Q(state="delivered")
            ),
            models.Index(fields=["subscription", "state"], name="delivery_subscription_state"),
            # Each resource's open deliveries to an endpoint in the order they were accepted: the
            # claim's look for an earlier one still open (routing.claim) reads only open ones, so
            # it costs the same however many of the resource's deliveries were sent before.
            models.Index(
                fields=["subscription", "resource_key", "id"],
                name="delivery_holding",
                condition=models.Q(state__in=("pending", "retrying", "delivering")),
            ),
            # The due deliveries without a resource key, which nothing holds back: a claim reads
            # them here when a long chain of one order fills its first look.
            models.Index(
                fields=["subscription", "next_attempt_at", "id"],
                name="delivery_open_unkeyed",
                condition=models.Q(state__in=("pending", "retrying"), resource_key__isnull=True),
            ),
            # The admin's "failed in the last hour/day": a failed delivery last changed when it failed.
            # Failed ones only, so a delivery that succeeds never writes to it.
            models.Index(fields=["updated_at"], name="delivery_failed_changed", condition=models.Q(state="failed")),
            # A delivery's replays, and the check of this foreign key when a delivery is deleted.
            models.Index(fields=["replay_of"], name="delivery_replays", condition=models.Q(replay_of__isnull=False)),
            # An endpoint's due deliveries in the order a batch claims them (routing.pump): only open
            # ones are in it, so it stays as small as the backlog.
            models.Index(
                fields=["subscription", "next_attempt_at", "id"],
                name="delivery_open_due",
                condition=models.Q(state__in=("pending", "retrying")),
            ),
        ]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.event.message} {self.event.message_id} to {self.subscription.name}"

    @classmethod
    def routed(cls, *, event: Event, subscription: Subscription) -> Delivery:
        """The new delivery routing makes of an event for a subscription (not saved): due when the
        event was made, and with the event's resource key, which keeps a resource's order."""
        return instance_new(
            cls,
            event=event,
            subscription=subscription,
            resource_key=event.resource_key,
            next_attempt_at=event.created_at,
        )


class Attempt(models.Model):
    # Looked up (and its foreign key checked) through attempt_unique_delivery_number, which starts with it.
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts", db_index=False)
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    request_method = models.CharField(max_length=6)
    request_url = models.URLField(max_length=500)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    succeeded = models.BooleanField(default=False)
    # What the endpoint said it did, in its reply's `summary` (routing.reply_forms): shown with the
    # event's notifications, to its store too, where the reply's body is not.
    summary = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        # On PostgreSQL partitioned by ranges of delivery_id, the delivery's (docs/storage.md).
        ordering = ["delivery_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="attempt_unique_delivery_number"),
        ]
        # The dashboard counts the last day's attempts and failures by start time: with `succeeded`
        # in the index that is an index-only scan.
        indexes = [models.Index(fields=["started_at", "succeeded"], name="attempt_started_succeeded")]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"


class NotificationLevel(models.TextChoices):
    INFO = "info", "Info"
    WARN = "warn", "Warning"
    ERROR = "error", "Error"


class Notification(models.Model):
    """What an endpoint said about an event (or what the hub says about a subscription)."""

    event = models.ForeignKey(Event, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications")
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    level = models.CharField(max_length=5, choices=NotificationLevel.choices, default=NotificationLevel.INFO)
    subject = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    resource_key = models.CharField(max_length=200, null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.level}: {self.subject}"


class Schedule(models.Model):
    """A subscription's pull: its message (`get_orders`) sent to the endpoint every interval or on a
    cron expression (routing.schedules). The next run is claimed in the database, so each tick runs
    once however many schedulers look."""

    subscription = models.OneToOneField(Subscription, on_delete=models.CASCADE, related_name="schedule")
    message = models.CharField(
        max_length=100, default="get_orders", help_text="What the endpoint is asked, e.g. get_orders."
    )
    interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Every this many seconds; leave empty to use a cron expression."
    )
    cron = models.CharField(
        max_length=100, blank=True, default="", help_text="A cron expression in UTC, e.g. */15 * * * *."
    )
    is_paused = models.BooleanField(default=False)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The tick event last made, and how its last attempt ended ("" when it succeeded).
    last_event = models.ForeignKey(
        Event, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    last_error = models.TextField(blank=True, default="", editable=False)
    last_succeeded_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["subscription__name"]
        indexes = [
            # What the scheduler reads every few seconds: the running schedules that are due.
            models.Index(fields=["next_run_at"], name="schedule_due", condition=models.Q(is_paused=False)),
        ]

    def __str__(self) -> str:
        return f"{self.message} for {self.subscription}"

    @property
    def every(self) -> str:
        return f"every {self.interval_seconds}s" if self.interval_seconds else f"cron {self.cron}"

    def clean(self) -> None:
        from routing.timing import schedule_validate

        errors = schedule_validate(message=self.message, interval_seconds=self.interval_seconds, cron=self.cron)
        if errors:
            raise ValidationError(errors)


class ReturnedObject(models.Model):
    """An object an endpoint returned (routing.returned_objects) as it was, by type, id and a digest
    of its content: the same object returned again unchanged makes no second event."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="+")
    # The object's type and id, e.g. "orders:R123" (the digest alone for an object without an id).
    key = models.CharField(max_length=200)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscription", "key", "digest"], name="returned_object_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.digest[:12]})"
