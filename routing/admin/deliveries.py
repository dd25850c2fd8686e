"""Deliveries in the admin: the list filtered by state, subscription and last change, a detail page
with every attempt, and the actions retry now, cancel and replay (each safe to click twice)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from events.models import Event
from infra.counts import BoundedCountPaginator
from routing import operations
from routing.admin.display import badge
from routing.admin.records import ReadOnlyRecords
from routing.admin.selectors import event_search_q
from routing.models import DELIVERY_OPEN_STATES, Attempt, Delivery


class ChangedWithinFilter(admin.SimpleListFilter):
    """'Failed in the last hour' is state=failed plus this: a failed delivery last changed when it failed."""

    title = "last change"
    parameter_name = "changed"
    WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("hour", "In the last hour"), ("day", "In the last day"), ("week", "In the last 7 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        window = self.WINDOWS.get(self.value() or "")
        if window is None:
            return queryset
        return queryset.filter(updated_at__gte=timezone.now() - window)


class OriginFilter(admin.SimpleListFilter):
    """Test sends are the admin's probes of an endpoint: the dashboard's failure counts leave them out."""

    title = "origin"
    parameter_name = "origin"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("events", "Events"), ("tests", "Test sends")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "events":
            return queryset.exclude(event__message=operations.TEST_MESSAGE)
        if self.value() == "tests":
            return queryset.filter(event__message=operations.TEST_MESSAGE)
        return queryset


class AttemptInline(ReadOnlyRecords, admin.TabularInline):
    model = Attempt
    extra = 0
    can_delete = False
    fields = ("number", "started_at", "request_method", "status_code", "latency_ms", "succeeded", "error", "response")
    readonly_fields = fields
    ordering = ("number",)

    @admin.display(description="response body")
    def response(self, obj: Attempt) -> str:
        if not obj.response_body:
            return "—"
        return format_html('<pre class="hub-pre small">{}</pre>', obj.response_body)


# What each action does, and how it reports the outcome for one delivery.
def _retry(delivery_id: int) -> tuple[bool, str]:
    if operations.delivery_retry_now(delivery_id=delivery_id):
        return True, f"Delivery {delivery_id} will be retried now."
    row = Delivery.objects.filter(pk=delivery_id).values("state", "subscription__is_enabled").first()
    if row is None:
        return False, f"Delivery {delivery_id} does not exist."
    if not row["subscription__is_enabled"]:
        return False, f"Delivery {delivery_id} was not retried: its subscription is disabled; enable it first."
    return False, f"Delivery {delivery_id} was not retried: it is {row['state']}."


def _cancel(delivery_id: int) -> tuple[bool, str]:
    if operations.delivery_cancel(delivery_id=delivery_id):
        return True, f"Delivery {delivery_id} cancelled."
    state = Delivery.objects.filter(pk=delivery_id).values_list("state", flat=True).first()
    return False, f"Delivery {delivery_id} was not cancelled: it is {state or 'gone'}."


def _replay(delivery_id: int) -> tuple[bool, str]:
    replay = operations.delivery_replay(delivery_id=delivery_id)
    return True, f"Delivery {replay.pk} replays delivery {delivery_id} ({replay.state})."


DELIVERY_ACTIONS: dict[str, Callable[[int], tuple[bool, str]]] = {
    "retry-now": _retry,
    "cancel": _cancel,
    "replay": _replay,
}


def _redirect_back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = fallback
    return HttpResponseRedirect(target)


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyRecords, admin.ModelAdmin):
    list_display = (
        "id",
        "event_link",
        "resource_key",
        "subscription",
        "state_badge",
        "attempt_count",
        "last_status_code",
        "next_attempt",
        "updated_at",
    )
    list_filter = ("state", ChangedWithinFilter, OriginFilter, "subscription")
    list_select_related = ("event", "subscription")
    # Counting the whole table for "N total" is a second full count on every page.
    # A page's count stays flat with history (infra.counts): an estimate past HUB_EXACT_COUNT_LIMIT.
    paginator = BoundedCountPaginator
    show_full_result_count = False
    search_fields = ("event__message_id",)  # replaced by exact matches in get_search_results
    search_help_text = "An event id, message_id or order number (R123, or a key such as shipment:H9)."
    actions = ("retry_now_selected", "cancel_selected", "replay_selected")
    fields = (
        "event_link",
        "subscription_link",
        "state_badge",
        "attempt_count",
        "next_attempt",
        "last_status_code",
        "last_error",
        "delivered_at",
        "replay_of_link",
        "lease_expires_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    inlines = (AttemptInline,)
    change_form_template = "admin/routing/delivery/change_form.html"

    class Media:
        css = {"all": ("routing/admin.css",)}

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Retry, cancel and replay: for whoever may change deliveries."""
        return request.user.has_perm("routing.change_delivery")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        q = event_search_q(search_term)
        if q is None:
            return queryset, False
        # A subquery, so the OR stays on the events' own indexes.
        return queryset.filter(event_id__in=Event.objects.filter(q).values("id")), False

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Delivery | None:
        try:
            return (
                self.get_queryset(request).select_related("event", "subscription", "replay_of").get(pk=int(object_id))
            )
        except (Delivery.DoesNotExist, ValueError):
            return None

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: Delivery) -> str:
        return badge(obj.state, obj.get_state_display())

    @admin.display(description="next attempt at", ordering="next_attempt_at")
    def next_attempt(self, obj: Delivery) -> datetime | None:
        # Only a waiting delivery has a next attempt; the column keeps its last value otherwise.
        return obj.next_attempt_at if obj.state in DELIVERY_OPEN_STATES else None

    @admin.display(description="event", ordering="event_id")
    def event_link(self, obj: Delivery) -> str:
        url = reverse("admin:events_event_change", args=[obj.event_id])
        return format_html('<a href="{}">{} {}</a>', url, obj.event.message, obj.event.message_id)

    @admin.display(description="subscription")
    def subscription_link(self, obj: Delivery) -> str:
        url = reverse("admin:routing_subscription_change", args=[obj.subscription_id])
        return format_html('<a href="{}">{}</a> → {}', url, obj.subscription.name, obj.subscription.url)

    @admin.display(description="replay of")
    def replay_of_link(self, obj: Delivery) -> str:
        if obj.replay_of_id is None:
            return "—"
        url = reverse("admin:routing_delivery_change", args=[obj.replay_of_id])
        return format_html('<a href="{}">delivery {}</a>', url, obj.replay_of_id)

    # --- Actions on the list ------------------------------------------------------------------
    def _operate(self, request: HttpRequest, delivery_id: int, action: str) -> tuple[bool, str]:
        """Run one action; what was done goes in the delivery's admin history (who, when, what)."""
        ok, message = DELIVERY_ACTIONS[action](delivery_id)
        if ok:
            delivery = Delivery.objects.filter(pk=delivery_id).only("id", "event_id", "subscription_id").first()
            if delivery is not None:
                self.log_change(request, delivery, message)
        return ok, message

    def _run_on_selected(self, request: HttpRequest, queryset: QuerySet, action: str) -> None:
        done: list[str] = []
        refused: list[str] = []
        for delivery_id in queryset.order_by("id").values_list("id", flat=True):
            ok, message = self._operate(request, delivery_id, action)
            (done if ok else refused).append(message)
        for message in done:
            self.message_user(request, message, messages.SUCCESS)
        for message in refused:
            self.message_user(request, message, messages.WARNING)

    @admin.action(description="Retry selected deliveries now", permissions=["operate"])
    def retry_now_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._run_on_selected(request, queryset, "retry-now")

    @admin.action(description="Cancel selected deliveries", permissions=["operate"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._run_on_selected(request, queryset, "cancel")

    @admin.action(description="Replay selected deliveries (send again as new deliveries)", permissions=["operate"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._run_on_selected(request, queryset, "replay")

    # --- The same actions as buttons on one delivery (its page and its event's page) ------------
    def get_urls(self) -> list:
        view = self.admin_site.admin_view(require_POST(self.delivery_action_view))
        actions = [
            path(
                f"<int:delivery_id>/{action}/",
                view,
                {"action": action},
                name=f"routing_delivery_{action.replace('-', '_')}",
            )
            for action in DELIVERY_ACTIONS
        ]
        return [*actions, *super().get_urls()]

    def delivery_action_view(self, request: HttpRequest, delivery_id: int, action: str) -> HttpResponse:
        if not self.has_operate_permission(request):
            raise PermissionDenied
        ok, message = self._operate(request, delivery_id, action)
        self.message_user(request, message, messages.SUCCESS if ok else messages.WARNING)
        return _redirect_back(request, reverse("admin:routing_delivery_change", args=[delivery_id]))
