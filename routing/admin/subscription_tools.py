"""Two tools on a subscription's admin page: its endpoint token (set it to the endpoint's own
key; reveal it on purpose, which the admin history records) and "try it" (a stored event rendered
as this subscription would send it, or the error its mapping gives)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib.admin import ModelAdmin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from events.models import Event
from routing.admin.display import secret_mask
from routing.endpoint_tokens import TOKEN_MAX_CHARS, subscription_token_set, token_validate
from routing.formats import RenderFailed, delivery_request
from routing.models import PayloadFormat, Subscription
from routing.transform import EXPRESSION_MAX_CHARS

# Headers "try it" shows masked: each is as good as a password to the endpoint.
_MASKED_HEADERS = frozenset({"x-hub-token", "x-augury-token"})


class TokenForm(forms.Form):
    token = forms.CharField(
        max_length=TOKEN_MAX_CHARS,
        strip=False,
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 60}),
        help_text="The endpoint's own key (endpoint_base's endpoint_key): sent as X-Hub-Token from the next delivery.",
    )

    def clean_token(self) -> str:
        try:
            return token_validate(self.cleaned_data["token"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class TryForm(forms.Form):
    event = forms.CharField(
        max_length=64,
        widget=forms.TextInput(attrs={"size": 40}),
        help_text="A stored event's id: its number in the admin or its event_id (a UUID).",
    )
    transform = forms.CharField(
        required=False,
        strip=False,
        max_length=EXPRESSION_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 10, "cols": 100, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text="For a transform subscription: the mapping to try (the saved one is not changed).",
    )

    def clean_event(self) -> Event:
        text = self.cleaned_data["event"].strip()
        event = None
        if text.isdigit():
            event = Event.objects.select_related("store").filter(pk=int(text)).first()
        else:
            try:
                event = Event.objects.select_related("store").filter(uid=uuid.UUID(text)).first()
            except ValueError:
                pass
        if event is None:
            raise forms.ValidationError(f"No stored event with the id '{text[:64]}'.")
        return event


@dataclass(frozen=True)
class Rendered:
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: str
    error: str = ""


def rendered_for(subscription: Subscription, event: Event, transform: str | None) -> Rendered:
    """What the subscription would send for `event` (secrets masked), or the error of its mapping."""
    store_name = subscription.store.name if subscription.store_id else (event.store.name if event.store_id else "")
    try:
        request = delivery_request(subscription, event, store_name=store_name, transform=transform)
    except RenderFailed as exc:
        return Rendered(method=exc.method, url=exc.url, headers=[], body="", error=str(exc))
    headers = [
        (name, secret_mask(value) if name.lower() in _MASKED_HEADERS else value)
        for name, value in request.headers.items()
    ]
    return Rendered(method=request.method, url=request.url, headers=headers, body=_pretty(request.body))


def _pretty(body: str) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


def _context(model_admin: ModelAdmin, request: HttpRequest, subscription: Subscription, title: str) -> dict[str, Any]:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "subscription": subscription,
        "original": subscription,
    }


def token_view(model_admin: ModelAdmin, request: HttpRequest, subscription: Subscription) -> HttpResponse:
    """GET: the token masked, a form to set it and a button to reveal it. POST `set` saves the
    endpoint's key; POST `reveal` shows the token, and the admin history says who looked."""
    form = TokenForm()
    revealed = ""
    if request.method == "POST" and "reveal" in request.POST:
        model_admin.log_change(request, subscription, "Revealed the endpoint token (X-Hub-Token).")
        revealed = subscription.token
    elif request.method == "POST":
        form = TokenForm(request.POST)
        if form.is_valid():
            if subscription_token_set(subscription_id=subscription.pk, token=form.cleaned_data["token"]):
                model_admin.log_change(request, subscription, "Set the endpoint token (X-Hub-Token).")
                model_admin.message_user(request, "The endpoint token is set; the next delivery sends it.")
            else:
                model_admin.message_user(request, "The endpoint token already was that one.")
            return HttpResponseRedirect(reverse("admin:routing_subscription_token", args=[subscription.pk]))
    context = {
        **_context(model_admin, request, subscription, f"Endpoint token of {subscription.name}"),
        "form": form,
        "masked": secret_mask(subscription.token),
        "revealed": revealed,
    }
    return TemplateResponse(request, "admin/routing/subscription/token.html", context)


def try_view(model_admin: ModelAdmin, request: HttpRequest, subscription: Subscription) -> HttpResponse:
    """A stored event rendered as the subscription sends it (the form's transform tried instead of
    the saved one); sends nothing and changes nothing."""
    result = None
    is_transform = subscription.payload_format == PayloadFormat.TRANSFORM
    if request.method == "POST":
        form = TryForm(request.POST)
        if form.is_valid():
            transform = form.cleaned_data["transform"] if is_transform else ""
            result = rendered_for(subscription, form.cleaned_data["event"], transform or None)
    else:
        form = TryForm(initial={"transform": subscription.transform, "event": request.GET.get("event", "")})
    context = {
        **_context(model_admin, request, subscription, f"Try {subscription.name} on a stored event"),
        "form": form,
        "result": result,
        "is_transform": is_transform,
    }
    return TemplateResponse(request, "admin/routing/subscription/try.html", context)
