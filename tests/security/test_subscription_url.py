"""Subscription URLs are checked when saved through the admin (Subscription.clean), with the same
rule deliveries follow: http(s), a host, no credentials, and no destination the SSRF guard refuses."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from routing.models import Subscription

pytestmark = pytest.mark.django_db


def url_error(url: str) -> str | None:
    subscription = Subscription(name="endpoint", url=url, message_types=["*"])
    try:
        subscription.full_clean()
    except ValidationError as exc:
        return " ".join(exc.message_dict.get("url", [])) or None
    return None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/hook", "Only http and https URLs can receive deliveries, not 'ftp'"),
        ("https://user:secret@example.com/hook", "Credentials in the URL are not allowed"),
        ("http://127.0.0.1:8000/hook", "Delivery to 127.0.0.1 is blocked: it is a loopback address"),
        ("http://localhost:8000/hook", "it is a loopback address"),
        ("http://10.0.0.5/hook", "it is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "it is a cloud metadata address"),
        ("http://[::1]:8000/hook", "it is a loopback address"),
    ],
)
def test_the_admin_form_refuses_urls_the_guard_would_refuse_in_words(settings, url, words):
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = False
    assert words in (url_error(url) or "")


def test_a_public_https_url_is_accepted_while_the_guard_is_on(settings):
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = False
    assert url_error("https://93.184.215.14/hook") is None


def test_with_private_destinations_allowed_local_urls_are_accepted_but_metadata_is_not(settings):
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = True
    assert url_error("http://127.0.0.1:8000/hook") is None
    assert url_error("http://erp.internal.invalid/hook") is None
    assert "never allowed" in (url_error("http://169.254.169.254/latest/meta-data/") or "")
    # Scheme and credentials are checked whatever the setting.
    assert "Credentials" in (url_error("https://user:secret@example.com/hook") or "")
    assert "Only http and https" in (url_error("ftp://example.com/hook") or "")
