"""The browser site's middleware (session, logged-in user, flash messages), passed over on the
store API's paths.

A store authenticates every request by its token (events.authentication), holds no session and is
never shown a message; on its paths these three only cost CPU. The admin, the API docs and
everything else still get them all.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest

# The store API (routing.api): POST /events, POST /events/batch, GET /events and /events/<id>.
STORE_API_PATH = "/events"


def store_api_path(path: str) -> bool:
    """Whether a request's path (path_info) is the store API's."""
    return path == STORE_API_PATH or path.startswith(STORE_API_PATH + "/")


class _SiteOnly:
    """The middleware's __call__ on every path but the store API's."""

    get_response: Any

    def __call__(self, request: HttpRequest) -> Any:
        if store_api_path(request.path_info):
            return self.get_response(request)
        return super().__call__(request)  # type: ignore[misc]


class SiteSessionMiddleware(_SiteOnly, SessionMiddleware):
    pass


class SiteAuthenticationMiddleware(_SiteOnly, AuthenticationMiddleware):
    pass


class SiteMessageMiddleware(_SiteOnly, MessageMiddleware):
    pass
