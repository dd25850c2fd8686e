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


def test_admin_login_with_its_csrf_token_works(admin_browser_login):
    client, response = admin_browser_login()
    assert response.status_code == 302
    assert "_auth_user_id" in client.session


# The store API needs no CSRF token, cookies or not: tests/ops/test_site_middleware.py.
