"""GET /schemas and GET /schemas/<message>: the standard description (events.conformance), public
like the OpenAPI document: it says what stores send and what a mapping is written against."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe

from events.conformance import schema_document, schema_name_for, schema_names
from events.messages import CANONICAL_MESSAGES, message_resource


def _schema_url(request: HttpRequest, name: str) -> str:
    return request.build_absolute_uri(f"/schemas/{name}")


@require_safe
@cache_control(public=True, max_age=300)
def schemas_list(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "schemas": [
                {
                    "name": name,
                    "title": schema_document(name).get("title", ""),
                    "messages": sorted(m for m in CANONICAL_MESSAGES if message_resource(m) == name),
                    "url": _schema_url(request, name),
                }
                for name in schema_names()
            ]
        }
    )


@require_safe
@cache_control(public=True, max_age=300)
def schema_detail(request: HttpRequest, message: str) -> JsonResponse:
    """The payload schema of a message ('order:new', an alias such as 'order:update', or 'order')."""
    name = schema_name_for(message)
    if name is None:
        body = {
            "error": "not_found",
            "detail": f"No schema describes '{message[:100]}'; these do: {', '.join(schema_names())}.",
            "field": "message",
        }
        return JsonResponse(body, status=404)
    document = {"$id": _schema_url(request, name), **schema_document(name)}
    return JsonResponse(document, content_type="application/schema+json", json_dumps_params={"ensure_ascii": False})
