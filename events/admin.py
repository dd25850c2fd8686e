"""Stores in the admin: create one (its token shown once), rotate its token, disable it.

Events are registered by routing/admin, since events never imports routing."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path

from events.models import Store
from events.selectors import store_cache_clear
from events.services import store_set_active, store_token_rotate


@admin.register(Store)
class StoreAdmin(admin.ModelAdmin):
    list_display = ("name", "active_badge", "token_masked", "created_at", "last_used_at", "previous_token_expires_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    actions = ("disable_selected", "enable_selected")
    fields = ("name", "is_active", "token_masked", "previous_token_expires_at", "created_at", "last_used_at")
    readonly_fields = ("token_masked", "previous_token_expires_at", "created_at", "last_used_at")
    change_form_template = "admin/events/store/change_form.html"

    def get_fields(self, request: HttpRequest, obj: Store | None = None) -> Any:
        return ("name", "is_active") if obj is None else self.fields

    @admin.display(description="active", ordering="is_active", boolean=True)
    def active_badge(self, obj: Store) -> bool:
        return obj.is_active

    @admin.display(description="token")
    def token_masked(self, obj: Store) -> str:
        # Only a hash is stored; the hint (the token's first characters) tells tokens apart.
        return f"{obj.token_hint}••••••••" if obj.token_hint else "—"

    # --- A new store: its token is made here and shown once -----------------------------------
    def save_model(self, request: HttpRequest, obj: Store, form: Any, change: bool) -> None:
        if not change:
            obj._token_shown_once = obj.token_set_new()
        super().save_model(request, obj, form, change)
        if change:
            # Other web processes refuse it within HUB_STORE_AUTH_CACHE_SECONDS.
            store_cache_clear()

    def response_add(self, request: HttpRequest, obj: Store, post_url_continue: str | None = None) -> Any:
        token = getattr(obj, "_token_shown_once", None)
        if token is None or "_popup" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(request, f"Store “{obj.name}” created.", messages.SUCCESS)
        return self._token_page(request, obj, token, grace_until=None)

    def _token_page(self, request: HttpRequest, store: Store, token: str, grace_until: Any) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Token of {store.name}",
            "store": store,
            "token": token,
            "grace_until": grace_until,
        }
        response = TemplateResponse(request, "admin/events/store/token.html", context)
        return response

    # --- Disable / enable -----------------------------------------------------------------------
    def _set_active(self, request: HttpRequest, queryset: Any, active: bool) -> int:
        changed = 0
        for store in queryset:
            if store_set_active(store_id=store.pk, active=active):
                self.log_change(request, store, "Enabled." if active else "Disabled.")
                changed += 1
        return changed

    @admin.action(description="Disable selected stores (their pushes are refused)", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: Any) -> None:
        self.message_user(request, f"{self._set_active(request, queryset, False)} store(s) disabled.", messages.SUCCESS)

    @admin.action(description="Enable selected stores", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: Any) -> None:
        self.message_user(request, f"{self._set_active(request, queryset, True)} store(s) enabled.", messages.SUCCESS)

    # --- Rotate the token -------------------------------------------------------------------------
    def get_urls(self) -> list:
        view = self.admin_site.admin_view(self.rotate_token_view)
        return [path("<int:store_id>/rotate-token/", view, name="events_store_rotate_token"), *super().get_urls()]

    def rotate_token_view(self, request: HttpRequest, store_id: int) -> HttpResponse:
        """GET asks to confirm; POST makes a new token and shows it once (the old one keeps its grace)."""
        store = get_object_or_404(Store, pk=store_id)
        if not self.has_change_permission(request, store):
            raise PermissionDenied
        if request.method != "POST":
            grace_hours = settings.HUB_TOKEN_ROTATION_GRACE_SECONDS / 3600
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": f"Rotate the token of {store.name}?",
                "store": store,
                "original": store,
                "grace": f"{grace_hours:g} hour{'' if grace_hours == 1 else 's'}",
            }
            return TemplateResponse(request, "admin/events/store/rotate_confirm.html", context)
        token = store_token_rotate(store=store)
        self.log_change(request, store, "Rotated the token.")
        return self._token_page(request, store, token, grace_until=store.previous_token_expires_at)
