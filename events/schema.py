"""The OpenAPI description of the store-facing API (drf-spectacular): request and reply shapes of
/events, and the store token as a bearer scheme. Documentation only: the views validate by hand
(events/services.py), these serializers are never used to parse a request."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers

from events.conformance import openapi_components
from events.models import EventStatus


class StoreTokenScheme(OpenApiAuthenticationExtension):
    target_class = "events.authentication.StoreTokenAuthentication"
    name = "storeToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The store's token (`hub_...`, from `manage.py createstore`): "
            "`Authorization: Bearer <token>`. Older store extensions may send `X-Hub-Store` + "
            "`X-Hub-Access-Token`, or `X-Augury-Token`, instead.",
        }


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="A stable code, e.g. invalid_envelope, unauthorized.")
    detail = serializers.CharField(help_text="A sentence for a human.")
    field = serializers.CharField(required=False, help_text="Where the problem is, when it has a place.")


class EnvelopeSerializer(serializers.Serializer):
    message = serializers.CharField(
        help_text="resource:action, e.g. order:new (aliases such as order:update accepted)."
    )
    message_id = serializers.CharField(
        required=False, max_length=255, help_text="Idempotency key per store; made by the hub when left out."
    )
    payload = serializers.DictField(
        help_text="Any JSON object; stored and delivered as sent. The canonical messages' payloads are described "
        "by the Message* components (MessageOrder, ...) and at GET /schemas/<message>; one that departs from its "
        "schema is accepted too, with a warn notification naming where."
    )


class EventAcceptedSerializer(serializers.Serializer):
    event_id = serializers.UUIDField()
    message = serializers.CharField()
    message_id = serializers.CharField()
    status = serializers.ChoiceField(choices=EventStatus.choices)
    duplicate = serializers.BooleanField(help_text="True when this message_id was pushed before (HTTP 200).")


class BatchRequestSerializer(serializers.Serializer):
    events = EnvelopeSerializer(many=True, help_text="Up to HUB_MAX_BATCH_SIZE envelopes (a bare array works too).")


class BatchItemSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the envelope in the batch.")
    status_code = serializers.IntegerField(help_text="What a single push of this envelope would have answered.")
    event_id = serializers.UUIDField(required=False)
    message = serializers.CharField(required=False)
    message_id = serializers.CharField(required=False)
    status = serializers.ChoiceField(choices=EventStatus.choices, required=False)
    duplicate = serializers.BooleanField(required=False)
    error = serializers.CharField(required=False, help_text="Set when this envelope was rejected.")
    detail = serializers.CharField(required=False)
    field = serializers.CharField(required=False)


class BatchResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = BatchItemSerializer(many=True)


class EventSummarySerializer(serializers.Serializer):
    event_id = serializers.UUIDField()
    message = serializers.CharField()
    message_id = serializers.CharField()
    status = serializers.ChoiceField(choices=EventStatus.choices)
    resource_key = serializers.CharField(allow_null=True, help_text="e.g. order:R123: what orders deliveries.")
    created_at = serializers.DateTimeField()


class EventPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="The next (older) page, or null.")
    previous = serializers.URLField(allow_null=True)
    results = EventSummarySerializer(many=True)


class AttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    started_at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True, help_text="The endpoint's HTTP status; null if none came.")
    latency_ms = serializers.IntegerField()
    succeeded = serializers.BooleanField()
    outcome = serializers.ChoiceField(
        choices=["success", "http_error", "invalid_reply", "timeout", "connection_error"],
        help_text="What kind of thing happened. The endpoint's URL, reply and error text are for admins only.",
    )
    summary = serializers.CharField(
        allow_blank=True,
        help_text="The sentence the endpoint's reply gave as its `summary` (newer Spree hub endpoints); empty if none.",
    )


class DeliverySerializer(serializers.Serializer):
    delivery_id = serializers.IntegerField()
    subscription = serializers.CharField(help_text="The subscription's name.")
    state = serializers.ChoiceField(choices=["pending", "delivering", "delivered", "retrying", "failed", "cancelled"])
    attempt_count = serializers.IntegerField()
    replay_of = serializers.IntegerField(allow_null=True, help_text="The delivery an admin's replay repeats.")
    created_at = serializers.DateTimeField()
    next_attempt_at = serializers.DateTimeField(allow_null=True, help_text="Set while pending or retrying.")
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    attempts = AttemptSerializer(many=True)


class NotificationSerializer(serializers.Serializer):
    """What the endpoints said about the event (and the hub: a payload that departs from its
    schema), with each attempt's summary among them, oldest first."""

    level = serializers.ChoiceField(choices=["info", "warn", "error"])
    subject = serializers.CharField()
    description = serializers.CharField()
    created_at = serializers.DateTimeField()


class EventDetailSerializer(EventSummarySerializer):
    payload = serializers.DictField()
    parent_event_id = serializers.UUIDField(allow_null=True, help_text="The event whose reply created this one.")
    deliveries = DeliverySerializer(many=True)
    notifications = NotificationSerializer(many=True)


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    what = {
        400: "Malformed JSON (with line and column) or a bad filter.",
        401: "Missing or wrong store token.",
        403: "The store is disabled.",
        404: "No such event for this store.",
        413: "Body or batch over the limit.",
        415: "Content-Type is not application/json.",
        422: "The envelope is invalid; `field` names the culprit.",
        429: "Too many requests; see Retry-After.",
        503: "The database is unavailable; see Retry-After.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=what[code]) for code in codes}


_ORDER_NEW = OpenApiExample(
    "order:new",
    value={"message": "order:new", "message_id": "518726r84910000004", "payload": {"order": {"number": "R123"}}},
    request_only=True,
)

EVENT_PUSH = extend_schema(
    operation_id="events_push",
    description="Stores the event durably and answers at once; each subscribed endpoint gets it later.",
    summary="Push one event (or a JSON array of events, answered like a batch)",
    request=EnvelopeSerializer,
    responses={
        202: OpenApiResponse(EventAcceptedSerializer, description="Stored; delivery starts. Location: /events/<id>."),
        200: OpenApiResponse(EventAcceptedSerializer, description="Duplicate message_id: the first event."),
        **_errors(400, 401, 403, 413, 415, 422, 429, 503),
    },
    examples=[_ORDER_NEW],
)

EVENT_BATCH = extend_schema(
    operation_id="events_push_batch",
    description='A JSON array of envelopes or {"events": [...]}; the reply has one result per envelope, in order.',
    summary="Push a batch: each envelope accepted or rejected on its own",
    request=BatchRequestSerializer,
    responses={200: BatchResultSerializer, **_errors(400, 401, 403, 413, 415, 422, 429, 503)},
)

EVENT_LIST = extend_schema(
    operation_id="events_list",
    description="Only the events of the store whose token is used.",
    summary="List this store's events, newest first (cursor pagination)",
    parameters=[
        OpenApiParameter("message", OpenApiTypes.STR, description="Only this message (aliases accepted)."),
        OpenApiParameter("status", OpenApiTypes.STR, enum=EventStatus.values),
        OpenApiParameter("since", OpenApiTypes.DATETIME, description="Created at or after (ISO 8601)."),
        OpenApiParameter("resource_key", OpenApiTypes.STR, description="e.g. order:R123."),
        OpenApiParameter("limit", OpenApiTypes.INT, description="Page size, at most 500."),
        OpenApiParameter("cursor", OpenApiTypes.STR, description="From `next` or `previous`."),
    ],
    responses={200: EventPageSerializer, **_errors(400, 401, 403, 429, 503)},
)

EVENT_DETAIL = extend_schema(
    operation_id="events_retrieve",
    description="Another store's event is not found (404). How each delivery fared, never an endpoint's URL, "
    "reply or error text (those are for admins); secrets and tokens are never included.",
    summary="One event with its payload, deliveries, attempts and the endpoints' notifications",
    parameters=[OpenApiParameter("event_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
    responses={200: EventDetailSerializer, **_errors(401, 403, 404, 429, 503)},
)


def message_schemas_hook(result: dict, generator: object, request: object, public: bool) -> dict:
    """drf-spectacular postprocessing: the standard description's schemas as components."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(openapi_components())
    return result
