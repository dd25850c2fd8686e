"""Subscriptions in the admin: a form that says in words what is wrong with a URL, message types,
filters or parameters; secrets shown masked (in clear once, right after they are made); enable,
disable, rotate the signing secret, and send a test event whose delivery the admin can watch."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from routing import operations
from routing.admin import subscription_tools
from routing.admin.display import badge, secret_mask
from routing.matching import message_types_validate
from routing.models import SUBSCRIPTION_EDITABLE_FIELDS, PayloadFormat, Subscription, parameters_validate
from routing.standing import subscription_disable
from routing.subscriptions import receives_nothing, subscription_has_schedule, subscription_receives
from routing.transport.netguard import subscription_url_validate


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows its value indented, one item a line, so lists are easy to edit."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)


class SubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https", help_text="Where deliveries are sent (http or https).")

    class Meta:
        model = Subscription
        fields = SUBSCRIPTION_EDITABLE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Empty means none: a subscription that only pulls gets its schedule's ticks and nothing pushed.
        self.fields["message_types"].required = False
        self.fields["message_types"].help_text = (
            'Message names or wildcards, e.g. ["order:new", "shipment:*"] or ["*"]. Leave empty for a '
            "subscription that only pulls: it gets its schedule's ticks and no pushed event."
        )
        # Left out (a form saved before formats existed), it means the envelope, as it always did.
        self.fields["payload_format"].required = False

    def clean_message_types(self) -> list[Any]:
        types = self.cleaned_data.get("message_types")
        if types in (None, ""):
            return []
        try:
            message_types_validate(types)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        return types

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        subscription_url_validate(url)
        return url

    def clean_parameters(self) -> list[Any]:
        parameters = self.cleaned_data.get("parameters")
        try:
            parameters_validate(parameters)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        return parameters or []

    def clean_payload_format(self) -> str:
        return self.cleaned_data.get("payload_format") or PayloadFormat.ENVELOPE

    def clean_paths(self) -> dict[str, Any]:
        # An emptied textarea means "the URL as it is"; Subscription.clean judges the rest.
        return self.cleaned_data.get("paths") or {}

    def clean_object_messages(self) -> dict[str, Any]:
        # An emptied textarea means the default names; Subscription.clean judges the rest.
        return self.cleaned_data.get("object_messages") or {}

    def clean_filters(self) -> list[Any]:
        # An emptied textarea means "no filters", not SQL NULL; Subscription.clean judges the rest.
        return self.cleaned_data.get("filters") or []


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    form = SubscriptionForm
    formfield_overrides = {models.JSONField: {"form_class": PrettyJSONField}}
    list_display = (
        "name",
        "url",
        "types",
        "payload_format",
        "enabled_badge",
        "disabled_reason",
        "store",
        "signing_secret_masked",
        "failing_since",
    )
    list_filter = ("is_enabled", "payload_format", "store")
    list_select_related = ("store",)
    search_fields = ("name", "url")
    actions = ("enable_selected", "disable_selected", "send_test_selected", "rotate_secret_selected")
    readonly_fields = (
        "signing_secret_masked",
        "previous_secret_grace",
        "token_masked",
        "failing_since",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "url", "store", "receive_own_events", "is_enabled", "disabled_reason")}),
        ("What it receives", {"fields": ("message_types", "filters", "filter_mode", "parameters")}),
        ("What its replies return", {"fields": ("object_messages",)}),
        (
            "How it is sent",
            {
                "fields": (
                    "payload_format",
                    "paths",
                    "transform",
                    "http_method",
                    "timeout_seconds",
                    "max_in_flight",
                    "retry_enabled",
                    "retry_schedule",
                )
            },
        ),
        ("Secrets", {"fields": ("signing_secret_masked", "previous_secret_grace", "token_masked")}),
        ("History", {"fields": ("failing_since", "created_at", "updated_at")}),
    )
    change_form_template = "admin/routing/subscription/change_form.html"

    class Media:
        css = {"all": ("routing/admin.css",)}

    def get_queryset(self, request: HttpRequest) -> Any:
        # The change page links to the schedule: read with the subscription, not after it.
        return super().get_queryset(request).select_related("schedule")

    @admin.display(description="message types")
    def types(self, obj: Subscription) -> str:
        return subscription_receives(obj)

    def save_model(self, request: HttpRequest, obj: Subscription, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # Not refused: the schedule is made after its subscription (on its own page), as in the API.
        if receives_nothing(message_types=obj.message_types, has_schedule=subscription_has_schedule(obj)):
            url = f"{reverse('admin:routing_schedule_add')}?subscription={obj.pk}"
            self.message_user(
                request,
                format_html(
                    "“{}” receives nothing until it has message types or a schedule: "
                    '<a href="{}" id="schedule-add">add a schedule</a>.',
                    obj.name,
                    url,
                ),
                messages.WARNING,
            )

    @admin.display(description="enabled", ordering="is_enabled")
    def enabled_badge(self, obj: Subscription) -> str:
        return badge("enabled", "Enabled") if obj.is_enabled else badge("disabled", "Disabled")

    @admin.display(description="signing secret")
    def signing_secret_masked(self, obj: Subscription) -> str:
        return secret_mask(obj.signing_secret)

    @admin.display(description="previous signing secret")
    def previous_secret_grace(self, obj: Subscription) -> str:
        if not obj.previous_signing_secret_active():
            return "—"
        expires = obj.previous_signing_secret_expires_at
        return f"{secret_mask(obj.previous_signing_secret)}, still signed with until {expires:%Y-%m-%d %H:%M:%S} UTC"

    @admin.display(description="token (X-Hub-Token)")
    def token_masked(self, obj: Subscription) -> str:
        if not obj.pk:
            return secret_mask(obj.token)
        url = reverse("admin:routing_subscription_token", args=[obj.pk])
        return format_html('{} <a href="{}" id="token-manage">Set or reveal</a>', secret_mask(obj.token), url)

    # --- A new subscription: its signing secret is shown once ----------------------------------
    def response_add(self, request: HttpRequest, obj: Subscription, post_url_continue: str | None = None) -> Any:
        if "_popup" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(request, f"Subscription “{obj.name}” created.", messages.SUCCESS)
        return self._secrets_page(request, [(obj, obj.signing_secret)], "Subscription created")

    def _secrets_page(
        self, request: HttpRequest, secrets: list[tuple[Subscription, str]], title: str
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "secrets": secrets,
        }
        response = TemplateResponse(request, "admin/routing/subscription/secret.html", context)
        return response

    # --- Actions on the list ------------------------------------------------------------------
    @admin.action(description="Enable selected subscriptions", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: Any) -> None:
        changed = 0
        for subscription in queryset:
            if operations.subscription_enable(subscription_id=subscription.pk):
                self.log_change(request, subscription, "Enabled.")
                changed += 1
        self.message_user(request, f"{changed} subscription(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable selected subscriptions", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: Any) -> None:
        reason = f"disabled by {request.user.get_username()} in the admin"
        changed = 0
        for subscription in queryset:
            if subscription_disable(subscription_id=subscription.pk, reason=reason):
                self.log_change(request, subscription, "Disabled.")
                changed += 1
        self.message_user(request, f"{changed} subscription(s) disabled.", messages.SUCCESS)

    @admin.action(description="Send a test event to selected subscriptions", permissions=["change"])
    def send_test_selected(self, request: HttpRequest, queryset: Any) -> None:
        for pk in queryset.values_list("pk", flat=True):
            delivery = operations.subscription_send_test(subscription_id=pk)
            url = reverse("admin:routing_delivery_change", args=[delivery.pk])
            self.message_user(
                request,
                format_html('Test event sent: <a href="{}">delivery {}</a>.', url, delivery.pk),
                messages.SUCCESS,
            )

    @admin.action(description="Rotate the signing secret of selected subscriptions", permissions=["change"])
    def rotate_secret_selected(self, request: HttpRequest, queryset: Any) -> TemplateResponse:
        secrets = [
            (sub, operations.subscription_secret_rotate(subscription_id=sub.pk)) for sub in queryset.order_by("name")
        ]
        return self._secrets_page(request, secrets, "New signing secrets")

    # --- The same as buttons on one subscription ----------------------------------------------
    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:subscription_id>/send-test/",
                wrap(require_POST(self.send_test_view)),
                name="routing_subscription_send_test",
            ),
            path(
                "<int:subscription_id>/rotate-secret/",
                wrap(self.rotate_secret_view),
                name="routing_subscription_rotate_secret",
            ),
            path("<int:subscription_id>/token/", wrap(self.token_view), name="routing_subscription_token"),
            path("<int:subscription_id>/try/", wrap(self.try_view), name="routing_subscription_try"),
            *super().get_urls(),
        ]

    def _subscription_or_404(self, request: HttpRequest, subscription_id: int) -> Subscription:
        from django.shortcuts import get_object_or_404

        subscription = get_object_or_404(Subscription, pk=subscription_id)
        if not self.has_change_permission(request, subscription):
            raise PermissionDenied
        return subscription

    def send_test_view(self, request: HttpRequest, subscription_id: int) -> HttpResponse:
        """Send a test event and open its delivery, which reloads itself until it has a result."""
        self._subscription_or_404(request, subscription_id)
        delivery = operations.subscription_send_test(subscription_id=subscription_id)
        self.message_user(request, f"Test event sent as delivery {delivery.pk}; its result appears below.")
        return HttpResponseRedirect(reverse("admin:routing_delivery_change", args=[delivery.pk]))

    def token_view(self, request: HttpRequest, subscription_id: int) -> HttpResponse:
        return subscription_tools.token_view(self, request, self._subscription_or_404(request, subscription_id))

    def try_view(self, request: HttpRequest, subscription_id: int) -> HttpResponse:
        return subscription_tools.try_view(self, request, self._subscription_or_404(request, subscription_id))

    def rotate_secret_view(self, request: HttpRequest, subscription_id: int) -> HttpResponse:
        """GET asks to confirm; POST makes a new secret and shows it once."""
        subscription = self._subscription_or_404(request, subscription_id)
        if request.method != "POST":
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": f"Rotate the signing secret of {subscription.name}?",
                "subscription": subscription,
                "original": subscription,
            }
            return TemplateResponse(request, "admin/routing/subscription/rotate_confirm.html", context)
        secret = operations.subscription_secret_rotate(subscription_id=subscription.pk)
        self.log_change(request, subscription, "Rotated the signing secret.")
        return self._secrets_page(request, [(subscription, secret)], "New signing secret")
