"""Events in the admin: the list (filters, exact search by message_id and order number, status at a
glance), the detail page with everything that happened to an event, and the timeline of an order.

Registered by routing, not events: the detail shows deliveries, and events never import routing."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from events.models import Event
from infra.counts import BoundedCountPaginator
from routing.admin.display import badge, json_pretty
from routing.admin.records import ReadOnlyRecords
from routing.admin.selectors import (
    event_detail,
    event_messages,
    event_search_q,
    resource_key_from_query,
    resource_timeline,
)


class MessageFilter(admin.SimpleListFilter):
    title = "message"
    parameter_name = "message"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in event_messages()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(message=self.value()) if self.value() else queryset


def timeline_url(resource_key: str) -> str:
    return reverse("admin:events_event_timeline") + "?" + urlencode({"key": resource_key})


@admin.register(Event)
class EventAdmin(ReadOnlyRecords, admin.ModelAdmin):
    list_display = ("id", "message", "message_id", "order_link", "store", "status_badge", "source", "created_at")
    list_filter = ("status", MessageFilter, "store", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("store",)
    # A page's count stays flat with history (infra.counts): an estimate past HUB_EXACT_COUNT_LIMIT.
    paginator = BoundedCountPaginator
    show_full_result_count = False
    search_fields = ("message_id",)  # replaced by exact matches in get_search_results
    search_help_text = "An event id, message_id or order number (R123, or a key such as shipment:H9)."
    fields = (
        "uid",
        "message",
        "message_id",
        "status_badge",
        "store",
        "source",
        "origin",
        "order_link",
        "parent_link",
        "depth",
        "created_at",
        "payload_pretty",
    )
    readonly_fields = fields
    change_form_template = "admin/routing/event/change_form.html"

    class Media:
        css = {"all": ("routing/admin.css",)}

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        q = event_search_q(search_term)
        return (queryset, False) if q is None else (queryset.filter(q), False)

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Event | None:
        try:
            return self.get_queryset(request).select_related("store", "parent").get(pk=int(object_id))
        except (Event.DoesNotExist, ValueError):
            return None

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        obj = kwargs.get("obj")
        if obj is not None:
            context["hub"] = event_detail(event=obj)
        return super().render_change_form(request, context, *args, **kwargs)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Event) -> str:
        return badge(obj.status, obj.get_status_display())

    @admin.display(description="order / resource", ordering="resource_key")
    def order_link(self, obj: Event) -> str:
        if not obj.resource_key:
            return "—"
        return format_html('<a href="{}" title="Timeline">{}</a>', timeline_url(obj.resource_key), obj.resource_key)

    @admin.display(description="parent event")
    def parent_link(self, obj: Event) -> str:
        if obj.parent is None:
            return "—"
        url = reverse("admin:events_event_change", args=[obj.parent_id])
        return format_html('<a href="{}">{} {}</a>', url, obj.parent.message, obj.parent.message_id)

    @admin.display(description="payload")
    def payload_pretty(self, obj: Event) -> str:
        return format_html('<pre class="hub-pre" id="payload">{}</pre>', json_pretty(obj.payload))

    # --- The timeline of one order ----------------------------------------------------------
    def get_urls(self) -> list:
        return [
            path("timeline/", self.admin_site.admin_view(self.timeline_view), name="events_event_timeline"),
            *super().get_urls(),
        ]

    def timeline_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        typed = (request.GET.get("key") or request.GET.get("order") or "").strip()
        timeline = resource_timeline(resource_key=resource_key_from_query(typed)) if typed else None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Timeline of {timeline.resource_key}" if timeline else "Order timeline",
            "typed": typed,
            "timeline": timeline,
        }
        return TemplateResponse(request, "admin/routing/timeline.html", context)
