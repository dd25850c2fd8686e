"""The site's session, user and message middleware pass over the store API's paths and still
run everywhere else (integrator/site_middleware.py)."""

from __future__ import annotations

import pytest
from django.http import HttpResponse
from django.test import Client, RequestFactory

from integrator.site_middleware import (
    SiteAuthenticationMiddleware,
    SiteMessageMiddleware,
    SiteSessionMiddleware,
)

pytestmark = pytest.mark.django_db


def _seen_by_the_view(path: str) -> dict[str, bool]:
    """What the three middleware gave the request by the time the view got it."""
    seen: dict[str, bool] = {}

    def view(request):
        seen.update(
            session=hasattr(request, "session"),
            user=hasattr(request, "user"),
            messages=hasattr(request, "_messages"),
        )
        return HttpResponse()

    chain = SiteSessionMiddleware(SiteAuthenticationMiddleware(SiteMessageMiddleware(view)))
    request = RequestFactory().post(path, content_type="application/json")
    chain(request)
    return seen


@pytest.mark.parametrize("path", ["/events", "/events/batch", "/events/01a23bd2-0f0e-72ef-a86c-6b055d5c99a7"])
def test_the_store_api_gets_no_session_user_or_messages(path):
    assert _seen_by_the_view(path) == {"session": False, "user": False, "messages": False}


@pytest.mark.parametrize("path", ["/admin/", "/eventsx", "/manage/v1/events", "/api/docs/"])
def test_every_other_path_gets_them_all(path):
    assert _seen_by_the_view(path) == {"session": True, "user": True, "messages": True}


def test_a_push_carrying_site_cookies_is_answered_as_one_without(store):
    """A store's client that kept a session or CSRF cookie gets the same answer, and no cookie back."""
    client = Client(enforce_csrf_checks=True)
    client.cookies["sessionid"] = "not-a-session"
    client.cookies["csrftoken"] = "x" * 32
    response = client.post(
        "/events",
        b'{"message": "order:new", "payload": {}}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {store.token}",
    )
    assert response.status_code == 202
    assert not response.cookies
    assert "Cookie" not in response.get("Vary", "")


def test_the_admin_login_still_sets_and_ends_its_session(admin_browser_login):
    """Session, CSRF and user on the admin (its messages: tests/admin)."""
    client, login = admin_browser_login()
    assert login.status_code == 302
    response = client.post("/admin/logout/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}, follow=True)
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
