"""The shapes of the management API, in and out; the declarative file uses the same input shapes,
so a file item is refused exactly as the API would refuse it. Secrets never appear in an output
shape except the `...Created` / `...Rotated` ones, answered once."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from events.models import Store
from ops.manage.services import DELIVERIES_DEFAULT_PER_CALL, DELIVERIES_MAX_PER_CALL
from routing.models import DeliveryState, FilterMode, HttpMethod, PayloadFormat, Subscription


class StrictSerializer(serializers.Serializer):
    """Refuses keys it does not know: a typo in a file ('mesage_types') must not pass unnoticed."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": [f"Expected a JSON object, not {type(data).__name__}."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {unknown[0]: [f"Unknown field '{unknown[0]}'; known: {', '.join(self.fields)}."]}
            )
        return super().to_internal_value(data)


class StoreInput(StrictSerializer):
    name = serializers.CharField(max_length=100)
    is_active = serializers.BooleanField(required=False, help_text="False refuses the store's pushes.")


class SubscriptionInput(StrictSerializer):
    name = serializers.CharField(max_length=100, help_text="Unique; how the API, commands and files name it.")
    url = serializers.CharField(max_length=500, help_text="http(s); refused when aimed at the hub's own network.")
    store = serializers.CharField(
        allow_null=True, required=False, help_text="The store (by name) whose own events it does not get back."
    )
    receive_own_events = serializers.BooleanField(required=False)
    message_types = serializers.JSONField(
        required=False,
        help_text='e.g. ["order:new", "shipment:*"] or ["*"]; [] (the default) for none: a subscription that only '
        "pulls gets its schedule's ticks and no pushed event.",
    )
    filters = serializers.JSONField(
        required=False, help_text='[{"path": "order.channel", "op": "eq", "value": "spree"}]'
    )
    filter_mode = serializers.ChoiceField(choices=FilterMode.choices, required=False)
    parameters = serializers.JSONField(
        required=False,
        help_text='Sent as payload.parameters: [{"name": ..., "value": ...}]. Encrypted at rest; never read back.',
    )
    payload_format = serializers.ChoiceField(
        choices=PayloadFormat.choices, required=False, help_text="envelope (default), flat or transform."
    )
    paths = serializers.JSONField(
        required=False, help_text='A path under the URL per message: {"order:new": "/add_order", "*": ""}.'
    )
    transform = serializers.CharField(
        allow_blank=True, required=False, trim_whitespace=False, help_text="The JSONata mapping (transform format)."
    )
    object_messages = serializers.JSONField(
        required=False,
        help_text='The message each type of returned objects makes, e.g. {"orders": "order:updated"}.',
    )
    http_method = serializers.ChoiceField(choices=HttpMethod.choices, allow_blank=True, required=False)
    timeout_seconds = serializers.FloatField(required=False)
    max_in_flight = serializers.IntegerField(allow_null=True, required=False, min_value=0, max_value=32767)
    retry_enabled = serializers.BooleanField(required=False)
    retry_schedule = serializers.JSONField(required=False, allow_null=True, help_text="Seconds; null: the hub's.")
    is_enabled = serializers.BooleanField(required=False)
    disabled_reason = serializers.CharField(max_length=200, allow_blank=True, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # An emptied list means "none", as in the admin's form.
        for name in ("message_types", "filters", "parameters"):
            if name in attrs and attrs[name] in (None, ""):
                attrs[name] = []
        if "paths" in attrs and attrs["paths"] in (None, ""):
            attrs["paths"] = {}
        if "object_messages" in attrs and attrs["object_messages"] in (None, ""):
            attrs["object_messages"] = {}
        return attrs


class TokenInput(StrictSerializer):
    token = serializers.CharField(
        trim_whitespace=False,
        help_text="What the subscription sends as X-Hub-Token from now on (the endpoint's own key). Never shown back.",
    )


class ScheduleInput(StrictSerializer):
    message = serializers.CharField(max_length=100, required=False, help_text="What is pulled, e.g. get_orders.")
    interval_seconds = serializers.IntegerField(
        allow_null=True, required=False, help_text="Every this many seconds (or give `cron`)."
    )
    cron = serializers.CharField(
        max_length=100, allow_blank=True, required=False, help_text="A cron expression in UTC, e.g. */15 * * * *."
    )
    is_paused = serializers.BooleanField(required=False)


class ScheduleItem(ScheduleInput):
    """A schedule in the declarative file: the API's input, and the subscription it pulls for (in
    the API that is the URL's)."""

    subscription = serializers.CharField(max_length=100, help_text="The subscription, by name.")


class RotateInput(StrictSerializer):
    grace_seconds = serializers.IntegerField(
        required=False, min_value=0, help_text="How long the old token keeps working (default: the hub's)."
    )


class DeliveryFilterInput(StrictSerializer):
    subscription = serializers.CharField(required=False, help_text="Only deliveries to this subscription (name).")
    state = serializers.ListField(
        child=serializers.ChoiceField(choices=DeliveryState.choices),
        required=False,
        help_text="A state or a list of them; by default failed (cancel: pending, retrying and failed).",
    )
    since = serializers.DateTimeField(required=False, help_text="Deliveries created at or after (ISO 8601).")
    until = serializers.DateTimeField(required=False, help_text="Deliveries created before (ISO 8601).")
    message = serializers.CharField(required=False, help_text="A message name or a wildcard such as order:*.")
    limit = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=DELIVERIES_MAX_PER_CALL,
        default=DELIVERIES_DEFAULT_PER_CALL,
        help_text=f"At most this many, oldest first (default {DELIVERIES_DEFAULT_PER_CALL}, at most "
        f"{DELIVERIES_MAX_PER_CALL}); the rest is counted as `remaining`.",
    )
    dry_run = serializers.BooleanField(required=False, default=False, help_text="Count only; change nothing.")

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("state"), str):
            data = {**data, "state": [data["state"]]}
        return super().to_internal_value(data)


# --- Output ---------------------------------------------------------------------------------------
class StoreOutput(serializers.Serializer):
    name = serializers.CharField()
    is_active = serializers.BooleanField()
    token_hint = serializers.CharField(help_text="The token's first characters, to tell tokens apart.")
    previous_token_expires_at = serializers.DateTimeField(
        allow_null=True, help_text="Until when the token replaced by the last rotation still works."
    )
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)


class StoreCreated(StoreOutput):
    token = serializers.CharField(help_text="The store's token: shown this once, only its hash is kept.")


class StoreList(serializers.Serializer):
    results = StoreOutput(many=True)


class SubscriptionOutput(serializers.Serializer):
    name = serializers.CharField()
    url = serializers.CharField()
    store = serializers.CharField(allow_null=True, source="store.name", default=None)
    receive_own_events = serializers.BooleanField()
    message_types = serializers.JSONField()
    filters = serializers.JSONField()
    filter_mode = serializers.CharField()
    parameter_names = serializers.SerializerMethodField(help_text="The parameters' names; values are never shown.")
    payload_format = serializers.CharField()
    paths = serializers.JSONField()
    transform = serializers.CharField()
    object_messages = serializers.JSONField()
    http_method = serializers.CharField()
    timeout_seconds = serializers.FloatField()
    max_in_flight = serializers.IntegerField(allow_null=True)
    retry_enabled = serializers.BooleanField()
    retry_schedule = serializers.JSONField(allow_null=True)
    is_enabled = serializers.BooleanField()
    disabled_reason = serializers.CharField()
    failing_since = serializers.DateTimeField(allow_null=True)
    previous_signing_secret_expires_at = serializers.DateTimeField(
        allow_null=True, help_text="Until when deliveries are also signed with the secret replaced last."
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_parameter_names(self, obj: Subscription) -> list[str]:
        return [p.get("name") for p in obj.parameters or [] if isinstance(p, dict)]


class SubscriptionCreated(SubscriptionOutput):
    signing_secret = serializers.CharField(help_text="The whsec_ signing secret: shown this once.")
    token = serializers.CharField(help_text="Sent as X-Hub-Token: shown this once.")


class SubscriptionRotated(SubscriptionOutput):
    signing_secret = serializers.CharField(help_text="The new whsec_ secret: shown this once.")


class SubscriptionList(serializers.Serializer):
    results = SubscriptionOutput(many=True)


class StoreRotated(StoreOutput):
    token = serializers.CharField(help_text="The new token: shown this once.")


class ChangedOutput(serializers.Serializer):
    changed = serializers.BooleanField(help_text="False when it already was so (nothing written).")


class StoreChanged(StoreOutput, ChangedOutput):
    pass


class SubscriptionChanged(SubscriptionOutput, ChangedOutput):
    pass


class ScheduleOutput(serializers.Serializer):
    subscription = serializers.CharField(source="subscription.name")
    message = serializers.CharField()
    interval_seconds = serializers.IntegerField(allow_null=True)
    cron = serializers.CharField()
    is_paused = serializers.BooleanField()
    next_run_at = serializers.DateTimeField(allow_null=True)
    last_run_at = serializers.DateTimeField(allow_null=True)
    last_succeeded_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(help_text="How the last tick's last attempt failed; empty when it succeeded.")
    last_event_id = serializers.IntegerField(allow_null=True, help_text="The last tick event.")


class TickSent(serializers.Serializer):
    event_id = serializers.IntegerField()
    delivery_id = serializers.IntegerField()
    made = serializers.BooleanField(help_text="False when the previous tick, still open, was made due now instead.")


class TestSent(serializers.Serializer):
    delivery_id = serializers.IntegerField()
    state = serializers.CharField()


class DeliveryActionResult(serializers.Serializer):
    dry_run = serializers.BooleanField()
    matched = serializers.IntegerField(help_text="Deliveries the filter selects.")
    selected = serializers.IntegerField(help_text="Those this call acts on (or would): at most `limit`.")
    changed = serializers.IntegerField(required=False, help_text="Retried, cancelled or replayed.")
    skipped = serializers.IntegerField(required=False, help_text="Already so, or changed meanwhile.")
    remaining = serializers.IntegerField(help_text="Matched but left for the next call.")


def store_output(store: Store, **extra: Any) -> dict[str, Any]:
    return {**StoreOutput(store).data, **extra}


def subscription_output(subscription: Subscription, **extra: Any) -> dict[str, Any]:
    return {**SubscriptionOutput(subscription).data, **extra}
