"""Less work for the cyclic collector: what a request parsed freed as soon as the request is done,
and what a process loaded at its start left out of the collector's walks.

DRF's Request, view and Response refer to one another (encode/django-rest-framework#5826), so a
parsed body stays alive until the cyclic collector walks it; dropping it once the response is made
leaves the collector only the small skeleton.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

# What rest_framework.request.Request holds the parsed body in (_full_data is _data plus files).
_PARSED_BODY_ATTRIBUTES = ("_full_data", "_data", "_files")


def drf_request_of(response: HttpResponse) -> Any:
    """The DRF Request a response was rendered for, or None for a response not from a DRF view."""
    context = getattr(response, "renderer_context", None)
    return context.get("request") if isinstance(context, dict) else None


class ParsedBodyReleaseMiddleware:
    """Outermost middleware: by the time the response comes back here, the view, the renderer and
    every other middleware are done with the parsed body."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        drf_request = drf_request_of(response)
        if drf_request is not None:
            # Deleted, not set to None: a late reader gets DRF's error about a consumed body
            # instead of a silent empty one.
            for name in _PARSED_BODY_ATTRIBUTES:
                drf_request.__dict__.pop(name, None)
        return response


def loaded_objects_freeze() -> None:
    """Leave everything loaded so far (Django, the hub's modules, their caches) out of the cyclic
    collector's walks: a full collection then walks what the process made since, not the hundred
    thousand objects every import left. A worker's pump keeps a batch's deliveries alive across
    collections, which move them to the oldest generation and so bring on full collections.
    Collected first, so that no garbage is frozen for good."""
    gc.collect()
    gc.freeze()
