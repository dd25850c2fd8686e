"""Schedules in the admin: create one for a subscription, pause and resume it, change its interval
or cron expression, and run it now; the list shows each one's last run, next run and last error."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from routing.admin.display import badge
from routing.models import Schedule
from routing.schedules import schedule_run_now, schedule_save, schedule_set_paused


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = ("subscription", "message", "interval_seconds", "cron", "is_paused")


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = (
        "subscription",
        "message",
        "every",
        "state_badge",
        "last_run_at",
        "next_run_at",
        "last_succeeded_at",
        "error_short",
    )
    list_filter = ("is_paused",)
    list_select_related = ("subscription",)
    search_fields = ("subscription__name", "message")
    actions = ("run_now_selected", "pause_selected", "resume_selected")
    readonly_fields = ("next_run_at", "last_run_at", "last_succeeded_at", "last_error", "last_tick", "updated_at")
    fields = (
        "subscription",
        "message",
        "interval_seconds",
        "cron",
        "is_paused",
        "next_run_at",
        "last_run_at",
        "last_succeeded_at",
        "last_error",
        "last_tick",
        "updated_at",
    )
    change_form_template = "admin/routing/schedule/change_form.html"

    @admin.display(description="state", ordering="is_paused")
    def state_badge(self, obj: Schedule) -> str:
        if obj.is_paused:
            return badge("disabled", "Paused")
        if obj.last_error:
            return badge("failed", "Failing")
        return badge("enabled", "Running")

    @admin.display(description="last error")
    def error_short(self, obj: Schedule) -> str:
        return obj.last_error[:120] or "—"

    @admin.display(description="last tick")
    def last_tick(self, obj: Schedule) -> str:
        if obj.last_event_id is None:
            return "—"
        url = reverse("admin:events_event_change", args=[obj.last_event_id])
        return format_html('<a href="{}">event {}</a>', url, obj.last_event_id)

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        schedule_save(schedule=obj)

    # --- Actions ---------------------------------------------------------------------------
    @admin.action(description="Run selected schedules now", permissions=["change"])
    def run_now_selected(self, request: HttpRequest, queryset: Any) -> None:
        for schedule in queryset:
            tick = schedule_run_now(schedule_id=schedule.pk)
            self.log_change(request, schedule, "Ran now.")
            self._tick_message(request, schedule, tick.event_id, tick.made)

    @admin.action(description="Pause selected schedules", permissions=["change"])
    def pause_selected(self, request: HttpRequest, queryset: Any) -> None:
        changed = sum(self._pause(request, s, True) for s in queryset)
        self.message_user(request, f"{changed} schedule(s) paused.", messages.SUCCESS)

    @admin.action(description="Resume selected schedules", permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: Any) -> None:
        changed = sum(self._pause(request, s, False) for s in queryset)
        self.message_user(request, f"{changed} schedule(s) resumed.", messages.SUCCESS)

    def _pause(self, request: HttpRequest, schedule: Schedule, paused: bool) -> bool:
        changed = schedule_set_paused(schedule_id=schedule.pk, paused=paused)
        if changed:
            self.log_change(request, schedule, "Paused." if paused else "Resumed.")
        return changed

    def _tick_message(self, request: HttpRequest, schedule: Schedule, event_id: int, made: bool) -> None:
        url = reverse("admin:events_event_change", args=[event_id])
        text = "Tick sent" if made else "The open tick was made due now"
        self.message_user(request, format_html('{} for {}: <a href="{}">event {}</a>.', text, schedule, url, event_id))

    # --- "Run now" as a button on one schedule ----------------------------------------------
    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:schedule_id>/run-now/", wrap(require_POST(self.run_now_view)), name="routing_schedule_run_now"),
            *super().get_urls(),
        ]

    def run_now_view(self, request: HttpRequest, schedule_id: int) -> HttpResponse:
        schedule = get_object_or_404(Schedule, pk=schedule_id)
        if not self.has_change_permission(request, schedule):
            raise PermissionDenied
        tick = schedule_run_now(schedule_id=schedule.pk)
        self.log_change(request, schedule, "Ran now.")
        self._tick_message(request, schedule, tick.event_id, tick.made)
        return HttpResponseRedirect(reverse("admin:routing_schedule_change", args=[schedule.pk]))
