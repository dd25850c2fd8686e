"""Failures the API cannot provoke on demand still map to the one JSON error shape."""

from django.db import DataError, InterfaceError, OperationalError

from events.errors import api_exception_handler


def test_lost_database_connection_is_503_with_retry_after():
    for exc in (OperationalError("connection refused"), InterfaceError("connection already closed")):
        response = api_exception_handler(exc, {})
        assert response.status_code == 503
        assert response["Retry-After"] == "5"
        assert response.data["error"] == "service_unavailable"


def test_other_database_errors_are_not_disguised_as_an_outage():
    # A 503 invites clients to retry forever; a data error is a bug, left to the JSON 500 handler.
    assert api_exception_handler(DataError("bad value"), {}) is None
