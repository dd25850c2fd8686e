"""The management API, /manage/v1/...: stores, subscriptions and deliveries for staff, with a
management key (ops.models.ManagementKey), never a store token. Thin views: parse, call
ops.manage.services, shape the reply."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from events.errors import UnsupportedMediaType, _first_validation_error
from events.models import Store
from events.schema import ErrorSerializer
from ops.manage import services
from ops.manage.auth import HasManagementScope, ManagementKeyAuthentication, ManagementRateThrottle
from ops.manage.serializers import (
    DeliveryActionResult,
    DeliveryFilterInput,
    RotateInput,
    ScheduleInput,
    ScheduleOutput,
    StoreChanged,
    StoreCreated,
    StoreInput,
    StoreList,
    StoreOutput,
    StoreRotated,
    SubscriptionChanged,
    SubscriptionCreated,
    SubscriptionInput,
    SubscriptionList,
    SubscriptionOutput,
    SubscriptionRotated,
    TestSent,
    TickSent,
    TokenInput,
    store_output,
    subscription_output,
)
from routing.api import JsonAlwaysNegotiation
from routing.models import Subscription


class ManagementKeyScheme(OpenApiAuthenticationExtension):
    target_class = "ops.manage.auth.ManagementKeyAuthentication"
    name = "managementKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A management key (`hubm_...`, from `manage.py createmanagementkey NAME --scope ...`): "
            "`Authorization: Bearer <key>`. Scopes: stores:read, stores:write, subscriptions:read, "
            "subscriptions:write, deliveries:write. A store token gets 403.",
        }


def parsed(serializer_class: type[serializers.Serializer], data: Any, *, partial: bool = False) -> dict[str, Any]:
    """The validated input, or an InvalidField naming the first bad field."""
    serializer = serializer_class(data=data if data is not None else {}, partial=partial)
    if not serializer.is_valid():
        field, text = _first_validation_error(serializer.errors)
        raise services.InvalidField(text, field=field)
    return dict(serializer.validated_data)


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    what = {
        401: "No credentials, or not a valid management key.",
        403: "A store token, or a key without the scope this needs (named in `detail`).",
        404: "No store or subscription of that name.",
        409: "It cannot be done in its current state.",
        415: "Content-Type is not application/json.",
        422: "A value the hub refuses; `field` names it.",
        429: "Too many requests; see Retry-After.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=what[code]) for code in codes}


_READ_ERRORS = _errors(401, 403, 429)
_ONE_ERRORS = _errors(401, 403, 404, 429)
_WRITE_ERRORS = _errors(401, 403, 404, 415, 422, 429)
_NAME = OpenApiParameter("name", OpenApiTypes.STR, OpenApiParameter.PATH, description="The store's name.")
_SUB_NAME = OpenApiParameter("name", OpenApiTypes.STR, OpenApiParameter.PATH, description="The subscription's name.")


class ManageApi(APIView):
    """Base of every management endpoint: a management key holding `<resource>:read` for GET and
    `<resource>:write` for the rest; JSON in and out."""

    authentication_classes = [ManagementKeyAuthentication]
    permission_classes = [HasManagementScope]
    throttle_classes = [ManagementRateThrottle]
    content_negotiation_class = JsonAlwaysNegotiation
    resource = "stores"
    # Actions that change things need the write scope whatever the method.
    write_only = False

    def scope_for(self, request: Request) -> str:
        kind = "read" if request.method in ("GET", "HEAD", "OPTIONS") and not self.write_only else "write"
        return f"{self.resource}:{kind}"

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        has_body = request.META.get("CONTENT_LENGTH") not in (None, "", "0")
        if request.method in ("POST", "PATCH", "PUT") and has_body:
            content_type = request.content_type.split(";")[0].strip().lower()
            if content_type != "application/json":
                raise UnsupportedMediaType(
                    f"Content-Type must be application/json, not '{content_type or 'missing'}'.",
                    field="Content-Type",
                )

    def actor(self, request: Request) -> str:
        return f"key:{request.user.name}"


# --- Stores -----------------------------------------------------------------------------------
class StoreCollectionApi(ManageApi):
    @extend_schema(
        operation_id="manage_stores_list",
        summary="List the stores (tokens are never shown; only their first characters)",
        responses={200: StoreList, **_READ_ERRORS},
        tags=["manage: stores"],
    )
    def get(self, request: Request) -> Response:
        return Response({"results": [store_output(s) for s in Store.objects.order_by("name")]})

    @extend_schema(
        operation_id="manage_stores_create",
        summary="Create a store; its token is in the reply, the only time it is shown",
        request=StoreInput,
        responses={201: StoreCreated, **_errors(401, 403, 415, 422, 429)},
        tags=["manage: stores"],
    )
    def post(self, request: Request) -> Response:
        store, token = services.store_create(values=parsed(StoreInput, request.data), actor=self.actor(request))
        return Response(store_output(store, token=token), status=201)


class StoreDetailApi(ManageApi):
    @extend_schema(
        operation_id="manage_stores_read",
        summary="One store",
        parameters=[_NAME],
        responses={200: StoreOutput, **_ONE_ERRORS},
        tags=["manage: stores"],
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(store_output(services.store_by_name(name)))

    @extend_schema(
        operation_id="manage_stores_change",
        summary="Change a store's name or is_active (only the fields given)",
        parameters=[_NAME],
        request=StoreInput(partial=True),
        responses={200: StoreChanged, **_WRITE_ERRORS},
        tags=["manage: stores"],
    )
    def patch(self, request: Request, name: str) -> Response:
        store = services.store_by_name(name)
        values = parsed(StoreInput, request.data, partial=True)
        changed = services.store_update(store=store, values=values, actor=self.actor(request))
        return Response(store_output(store, changed=bool(changed)))


class _StoreActiveApi(ManageApi):
    active = True
    write_only = True

    def post(self, request: Request, name: str) -> Response:
        store = services.store_by_name(name)
        changed = services.store_update(store=store, values={"is_active": self.active}, actor=self.actor(request))
        return Response(store_output(store, changed=bool(changed)))


class StoreEnableApi(_StoreActiveApi):
    active = True

    @extend_schema(
        operation_id="manage_stores_enable",
        summary="Enable a store (its pushes are taken again)",
        parameters=[_NAME],
        request=None,
        responses={200: StoreChanged, **_ONE_ERRORS},
        tags=["manage: stores"],
    )
    def post(self, request: Request, name: str) -> Response:
        return super().post(request, name)


class StoreDisableApi(_StoreActiveApi):
    active = False

    @extend_schema(
        operation_id="manage_stores_disable",
        summary="Disable a store (its pushes are refused with 403)",
        parameters=[_NAME],
        request=None,
        responses={200: StoreChanged, **_ONE_ERRORS},
        tags=["manage: stores"],
    )
    def post(self, request: Request, name: str) -> Response:
        return super().post(request, name)


class StoreRotateApi(ManageApi):
    write_only = True

    @extend_schema(
        operation_id="manage_stores_rotate",
        summary="Give a store a new token (in the reply, once); the old one works for the grace",
        parameters=[_NAME],
        request=RotateInput,
        responses={200: StoreRotated, **_WRITE_ERRORS},
        tags=["manage: stores"],
    )
    def post(self, request: Request, name: str) -> Response:
        store = services.store_by_name(name)
        values = parsed(RotateInput, request.data)
        token = services.store_rotate(store=store, actor=self.actor(request), grace_seconds=values.get("grace_seconds"))
        return Response(store_output(store, token=token))


# --- Subscriptions --------------------------------------------------------------------------------
class _SubscriptionApi(ManageApi):
    resource = "subscriptions"


class SubscriptionCollectionApi(_SubscriptionApi):
    @extend_schema(
        operation_id="manage_subscriptions_list",
        summary="List the subscriptions (no secrets, tokens or parameter values)",
        responses={200: SubscriptionList, **_READ_ERRORS},
        tags=["manage: subscriptions"],
    )
    def get(self, request: Request) -> Response:
        subscriptions = Subscription.objects.select_related("store").order_by("name")
        return Response({"results": [subscription_output(s) for s in subscriptions]})

    @extend_schema(
        operation_id="manage_subscriptions_create",
        summary="Create a subscription; its signing secret and token are in the reply, once",
        description="Validated as the admin's form: the URL by the SSRF guard, message types, filters, "
        "parameters, retry schedule and timeout; a refusal names the field.",
        request=SubscriptionInput,
        responses={201: SubscriptionCreated, **_errors(401, 403, 415, 422, 429)},
        tags=["manage: subscriptions"],
    )
    def post(self, request: Request) -> Response:
        values = parsed(SubscriptionInput, request.data)
        subscription = services.subscription_create(values=values, actor=self.actor(request))
        body = subscription_output(subscription, signing_secret=subscription.signing_secret, token=subscription.token)
        return Response(body, status=201)


class SubscriptionDetailApi(_SubscriptionApi):
    @extend_schema(
        operation_id="manage_subscriptions_read",
        summary="One subscription (no secrets, token or parameter values)",
        parameters=[_SUB_NAME],
        responses={200: SubscriptionOutput, **_ONE_ERRORS},
        tags=["manage: subscriptions"],
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(subscription_output(services.subscription_by_name(name)))

    @extend_schema(
        operation_id="manage_subscriptions_change",
        summary="Change a subscription (only the fields given; the result is validated as a whole)",
        parameters=[_SUB_NAME],
        request=SubscriptionInput(partial=True),
        responses={200: SubscriptionChanged, **_WRITE_ERRORS},
        tags=["manage: subscriptions"],
    )
    def patch(self, request: Request, name: str) -> Response:
        subscription = services.subscription_by_name(name)
        values = parsed(SubscriptionInput, request.data, partial=True)
        changed = services.subscription_update(subscription=subscription, values=values, actor=self.actor(request))
        return Response(subscription_output(subscription, changed=bool(changed)))


class _SubscriptionEnabledApi(_SubscriptionApi):
    enabled = True
    write_only = True

    def post(self, request: Request, name: str) -> Response:
        subscription = services.subscription_by_name(name)
        changed = services.subscription_set_enabled(
            subscription=subscription, enabled=self.enabled, actor=self.actor(request)
        )
        return Response(subscription_output(subscription, changed=changed))


class SubscriptionEnableApi(_SubscriptionEnabledApi):
    enabled = True

    @extend_schema(
        operation_id="manage_subscriptions_enable",
        summary="Enable a subscription; what it missed while disabled, still due, is sent",
        parameters=[_SUB_NAME],
        request=None,
        responses={200: SubscriptionChanged, **_ONE_ERRORS},
        tags=["manage: subscriptions"],
    )
    def post(self, request: Request, name: str) -> Response:
        return super().post(request, name)


class SubscriptionDisableApi(_SubscriptionEnabledApi):
    enabled = False

    @extend_schema(
        operation_id="manage_subscriptions_disable",
        summary="Disable a subscription (noted where the admin looks)",
        parameters=[_SUB_NAME],
        request=None,
        responses={200: SubscriptionChanged, **_ONE_ERRORS},
        tags=["manage: subscriptions"],
    )
    def post(self, request: Request, name: str) -> Response:
        return super().post(request, name)


class SubscriptionRotateApi(_SubscriptionApi):
    write_only = True

    @extend_schema(
        operation_id="manage_subscriptions_rotate",
        summary="A new signing secret (in the reply, once); the old one also signs for the grace",
        parameters=[_SUB_NAME],
        request=None,
        responses={200: SubscriptionRotated, **_ONE_ERRORS},
        tags=["manage: subscriptions"],
    )
    def post(self, request: Request, name: str) -> Response:
        subscription = services.subscription_by_name(name)
        secret = services.subscription_rotate(subscription=subscription, actor=self.actor(request))
        return Response(subscription_output(subscription, signing_secret=secret))


class SubscriptionTokenApi(_SubscriptionApi):
    write_only = True

    @extend_schema(
        operation_id="manage_subscriptions_token_set",
        summary="Set the token the subscription sends as X-Hub-Token (an endpoint's own key); never shown back",
        parameters=[_SUB_NAME],
        request=TokenInput,
        responses={200: SubscriptionChanged, **_WRITE_ERRORS},
        tags=["manage: subscriptions"],
    )
    def post(self, request: Request, name: str) -> Response:
        subscription = services.subscription_by_name(name)
        values = parsed(TokenInput, request.data)
        changed = services.subscription_token_set(
            subscription=subscription, token=values["token"], actor=self.actor(request)
        )
        return Response(subscription_output(subscription, changed=changed))


class SubscriptionTestApi(_SubscriptionApi):
    write_only = True

    @extend_schema(
        operation_id="manage_subscriptions_test",
        summary="Send a hub:test event to this subscription only (one attempt)",
        parameters=[_SUB_NAME],
        request=None,
        responses={202: TestSent, **_ONE_ERRORS},
        tags=["manage: subscriptions"],
    )
    def post(self, request: Request, name: str) -> Response:
        subscription = services.subscription_by_name(name)
        delivery = services.subscription_test(subscription=subscription, actor=self.actor(request))
        return Response({"delivery_id": delivery.pk, "state": delivery.state}, status=202)


# --- A subscription's schedule ------------------------------------------------------------------
def schedule_output(schedule: Any, **extra: Any) -> dict[str, Any]:
    return {**ScheduleOutput(schedule).data, **extra}


class SubscriptionScheduleApi(_SubscriptionApi):
    @extend_schema(
        operation_id="manage_schedules_read",
        summary="The subscription's schedule: what it pulls, how often, its last run, next run and last error",
        parameters=[_SUB_NAME],
        responses={200: ScheduleOutput, **_ONE_ERRORS},
        tags=["manage: schedules"],
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(schedule_output(services.schedule_of(services.subscription_by_name(name))))

    def _put(self, request: Request, name: str, *, partial: bool) -> Response:
        subscription = services.subscription_by_name(name)
        values = parsed(ScheduleInput, request.data, partial=partial)
        schedule, created = services.schedule_put(
            subscription=subscription, values=values, actor=self.actor(request), partial=partial
        )
        return Response(schedule_output(schedule), status=201 if created else 200)

    @extend_schema(
        operation_id="manage_schedules_put",
        summary="Create or replace the subscription's schedule (an interval or a cron expression)",
        parameters=[_SUB_NAME],
        request=ScheduleInput,
        responses={200: ScheduleOutput, 201: ScheduleOutput, **_WRITE_ERRORS},
        tags=["manage: schedules"],
    )
    def put(self, request: Request, name: str) -> Response:
        return self._put(request, name, partial=False)

    @extend_schema(
        operation_id="manage_schedules_change",
        summary="Change the subscription's schedule (only the fields given): pause it with is_paused",
        parameters=[_SUB_NAME],
        request=ScheduleInput(partial=True),
        responses={200: ScheduleOutput, 201: ScheduleOutput, **_WRITE_ERRORS},
        tags=["manage: schedules"],
    )
    def patch(self, request: Request, name: str) -> Response:
        return self._put(request, name, partial=True)

    @extend_schema(
        operation_id="manage_schedules_delete",
        summary="Remove the subscription's schedule (its ticks so far stay)",
        parameters=[_SUB_NAME],
        request=None,
        responses={204: None, **_ONE_ERRORS},
        tags=["manage: schedules"],
    )
    def delete(self, request: Request, name: str) -> Response:
        services.schedule_delete(subscription=services.subscription_by_name(name), actor=self.actor(request))
        return Response(status=204)


class SubscriptionScheduleRunApi(_SubscriptionApi):
    write_only = True

    @extend_schema(
        operation_id="manage_schedules_run",
        summary="Run the subscription's schedule now (its next run stays)",
        parameters=[_SUB_NAME],
        request=None,
        responses={202: TickSent, **_ONE_ERRORS},
        tags=["manage: schedules"],
    )
    def post(self, request: Request, name: str) -> Response:
        tick = services.schedule_run(subscription=services.subscription_by_name(name), actor=self.actor(request))
        return Response({"event_id": tick.event_id, "delivery_id": tick.delivery_id, "made": tick.made}, status=202)


# --- Deliveries by filter -----------------------------------------------------------------------
class _DeliveriesApi(ManageApi):
    resource = "deliveries"
    action = "retry"

    def post(self, request: Request) -> Response:
        values = parsed(DeliveryFilterInput, request.data)
        flt = services.DeliveryFilter(
            subscription=values.get("subscription"),
            states=tuple(values.get("state") or ()),
            since=values.get("since"),
            until=values.get("until"),
            message=values.get("message"),
            limit=values["limit"],
        )
        result = services.deliveries_act(
            action=self.action, flt=flt, dry_run=values["dry_run"], actor=self.actor(request)
        )
        return Response(result)


def _deliveries_schema(action: str, summary: str) -> Any:
    return extend_schema(
        operation_id=f"manage_deliveries_{action}",
        summary=summary,
        description="The filter selects deliveries by subscription, state, creation time (since <= t < until) "
        "and message; at least one is required. Oldest first, at most `limit` per call; `remaining` says "
        "how many are left. `dry_run: true` only counts. Each delivery gets the admin's own action, safe "
        "to repeat.",
        request=DeliveryFilterInput,
        responses={200: DeliveryActionResult, **_errors(401, 403, 415, 422, 429)},
        tags=["manage: deliveries"],
    )


class DeliveryRetryApi(_DeliveriesApi):
    action = "retry"

    @_deliveries_schema("retry", "Retry now: failed ones get one more attempt, waiting ones are due now")
    def post(self, request: Request) -> Response:
        return super().post(request)


class DeliveryCancelApi(_DeliveriesApi):
    action = "cancel"

    @_deliveries_schema("cancel", "Cancel waiting or failed deliveries (one being sent finishes)")
    def post(self, request: Request) -> Response:
        return super().post(request)


class DeliveryReplayApi(_DeliveriesApi):
    action = "replay"

    @_deliveries_schema("replay", "Replay: a new delivery of the same event to the same subscription")
    def post(self, request: Request) -> Response:
        return super().post(request)
