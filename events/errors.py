"""One error type per kind of failure, turned into one JSON shape at the API edge."""

from __future__ import annotations

from typing import Any

from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response


class HubError(Exception):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"

    def __init__(self, detail: str, *, field: str | None = None, code: str | None = None, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if code:
            self.code = code
        self.extra = extra

    def with_status(self, status_code: int) -> HubError:
        self.status_code = status_code
        return self

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return body


class MalformedJson(HubError):
    code = "malformed_json"


class InvalidEnvelope(HubError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "invalid_envelope"


class InvalidFilter(HubError):
    """A query parameter of a list (GET /events) that cannot be understood."""

    code = "invalid_filter"


class UnsupportedMediaType(HubError):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class NotFound(HubError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class BodyTooLarge(HubError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "body_too_large"


class JsonTooDeep(HubError):
    code = "too_deep"


class JsonTooLarge(HubError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "too_many_keys"


class BatchTooLarge(HubError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "batch_too_large"


class ServiceUnavailable(HubError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"


_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.NotAuthenticated: "unauthorized",
    exceptions.AuthenticationFailed: "unauthorized",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ParseError: "malformed_json",
    exceptions.ValidationError: "invalid_envelope",
}


def _first_validation_error(detail: Any, prefix: str = "") -> tuple[str | None, str]:
    """DRF nests validation errors; a client wants the first field and sentence."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            field, text = _first_validation_error(value, f"{prefix}.{name}" if prefix and name else prefix or name)
            return field, text
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    return (prefix or None), str(detail)


def hub_error_response(error: HubError, headers: dict[str, str] | None = None) -> Response:
    return Response(error.as_dict(), status=error.status_code, headers=headers)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, HubError):
        headers = {"Retry-After": str(exc.extra.get("retry_after", 5))} if isinstance(exc, ServiceUnavailable) else None
        return hub_error_response(exc, headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    # Only a lost or refused connection is worth a retry; any other database error is a bug (500).
    if isinstance(exc, (OperationalError, InterfaceError)):
        return hub_error_response(
            ServiceUnavailable("The hub's database is unavailable; try again shortly.", retry_after=5),
            {"Retry-After": "5"},
        )
    if not isinstance(exc, exceptions.APIException):
        return None

    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None) is not None:
        headers["Retry-After"] = str(int(exc.wait) + 1)

    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), exc.default_code)
    field: str | None = None
    if isinstance(exc, exceptions.ValidationError):
        field, text = _first_validation_error(exc.detail)
        exc.status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    else:
        text = str(exc.detail)
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        exc.status_code = status.HTTP_401_UNAUTHORIZED
    body: dict[str, Any] = {"error": code, "detail": text}
    if field:
        body["field"] = field
    return Response(body, status=exc.status_code, headers=headers or None)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 for URLs no view matched: JSON like every other API answer (HTML for the admin)."""
    if request.path.startswith("/admin/"):
        return defaults.page_not_found(request, exception)
    body = {"error": "not_found", "detail": f"There is no '{request.path}' here; see docs/protocol.md."}
    return JsonResponse(body, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500, in the API's JSON shape (the traceback goes to the log, never to the client)."""
    if request.path.startswith("/admin/"):
        return defaults.server_error(request)
    body = {"error": "server_error", "detail": "The hub failed to handle this request; it has been logged."}
    return JsonResponse(body, status=500)
