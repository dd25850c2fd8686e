import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


def test_admin_login_without_a_csrf_token_is_refused():
    User.objects.create_superuser("boss", "boss@example.com", "pw-long-enough-1")
    client = Client(enforce_csrf_checks=True)
    response = client.post("/admin/login/", {"username": "boss", "password": "pw-long-enough-1"})
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_admin_login_with_its_csrf_token_works():
    User.objects.create_superuser("boss", "boss@example.com", "pw-long-enough-1")
    client = Client(enforce_csrf_checks=True)
    client.get("/admin/login/")
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/admin/login/", {"username": "boss", "password": "pw-long-enough-1", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    assert "_auth_user_id" in client.session


def test_the_store_api_needs_no_csrf_token(store):
    # Token-authenticated API calls carry no cookies, so CSRF does not apply to them.
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        "/events",
        b'{"message": "order:new", "payload": {}}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {store.token}",
    )
    assert response.status_code == 202
