"""Management keys in the admin: made here (the key shown once) or by `createmanagementkey`."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest
from django.template.response import TemplateResponse

from ops.manage.services import write_logged
from ops.models import SCOPES, ManagementKey


class ManagementKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES], widget=forms.CheckboxSelectMultiple, help_text="What the key may do."
    )

    class Meta:
        model = ManagementKey
        fields = ("name", "scopes", "is_active")


@admin.register(ManagementKey)
class ManagementKeyAdmin(admin.ModelAdmin):
    form = ManagementKeyForm
    list_display = ("name", "key_masked", "scope_list", "is_active", "created_at", "last_used_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    readonly_fields = ("key_masked", "created_at", "last_used_at")

    @admin.display(description="key")
    def key_masked(self, obj: ManagementKey) -> str:
        return f"{obj.key_hint}••••••••" if obj.key_hint else "—"

    @admin.display(description="scopes")
    def scope_list(self, obj: ManagementKey) -> str:
        return " ".join(obj.scopes or [])

    def save_model(self, request: HttpRequest, obj: ManagementKey, form: Any, change: bool) -> None:
        if not change:
            obj._key_shown_once = obj.key_set_new()
        super().save_model(request, obj, form, change)
        action = "management_key.change" if change else "management_key.create"
        write_logged(f"admin:{request.user.get_username()}", action, obj.name, scopes=obj.scopes)

    def response_add(self, request: HttpRequest, obj: ManagementKey, post_url_continue: str | None = None) -> Any:
        key = getattr(obj, "_key_shown_once", None)
        if key is None or "_popup" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(request, f"Management key “{obj.name}” created.", messages.SUCCESS)
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": f"Key {obj.name}", "key": key}
        return TemplateResponse(request, "admin/ops/managementkey/key.html", context)
