"""Template tags of the hub's admin pages: the dashboard and the buttons on a delivery."""

from __future__ import annotations

from typing import Any

from django import template

from events.models import EventStatus
from routing.admin.display import badge
from routing.admin.selectors import dashboard_counts
from routing.models import DELIVERY_OPEN_STATES, Delivery, DeliveryState

register = template.Library()

# Which buttons make sense in which state; clicking one twice is harmless either way.
_RETRYABLE = {*DELIVERY_OPEN_STATES, DeliveryState.FAILED}


@register.inclusion_tag("admin/routing/delivery_buttons.html", takes_context=True)
def hub_delivery_buttons(context: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
    buttons = []
    if delivery.state in _RETRYABLE:
        buttons += [("retry_now", "Retry now"), ("cancel", "Cancel")]
    if delivery.state != DeliveryState.DELIVERING:
        buttons.append(("replay", "Replay"))
    return {
        "delivery": delivery,
        "hub_delivery_buttons": buttons,
        "request": context.get("request"),
        "csrf_token": context.get("csrf_token"),
    }


@register.inclusion_tag("admin/routing/dashboard.html")
def hub_dashboard() -> dict[str, Any]:
    counts = dashboard_counts()
    return {
        "counts": counts,
        "delivery_states": [(state, label, counts.deliveries[state]) for state, label in Delivery.state.field.choices],
        "event_statuses": [(status, label, counts.events[status]) for status, label in EventStatus.choices],
    }


@register.simple_tag
def hub_badge(value: str, label: str) -> str:
    return badge(value, label)
