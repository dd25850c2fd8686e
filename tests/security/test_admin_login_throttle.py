"""Repeated failed admin logins lock out that username from that address, and that address, for a
cool-off (django-axes): 50 wrong passwords then the right one is refused with a 429 page; another
admin from another address still logs in; each lockout is logged."""

from __future__ import annotations

import logging

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.test import Client

from infra.clientip import client_ip

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
ATTACKER = "203.0.113.7"
OFFICE = "198.51.100.20"


def _login(client: Client, username: str, password: str, address: str):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def _logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def admins(db) -> None:
    User.objects.create_superuser("boss", "boss@example.com", "pw-long-enough-1")
    User.objects.create_superuser("clerk", "clerk@example.com", "pw-long-enough-2")


def test_fifty_wrong_passwords_then_the_right_one_is_refused(admins, settings, caplog):
    attacker = Client()
    with caplog.at_level(logging.WARNING):
        answers = [_login(attacker, "boss", f"guess-{n}", ATTACKER).status_code for n in range(50)]
        right = _login(attacker, "boss", "pw-long-enough-1", ATTACKER)

    limit = settings.AXES_FAILURE_LIMIT
    assert answers[: limit - 1] == [200] * (limit - 1)  # the form again, "enter a correct username..."
    assert set(answers[limit - 1 :]) == {429}
    assert right.status_code == 429
    assert not _logged_in(attacker)
    page = right.content.decode()
    assert "Too many failed logins" in page and "15 minutes" in page
    assert right["Retry-After"] == "900"
    assert "guess-" not in str(list(AccessAttempt.objects.values()))  # the passwords are not kept
    logged = [r.getMessage() for r in caplog.records]
    assert any("Admin login refused" in m and ATTACKER in m and "'boss'" in m for m in logged), logged
    assert any("AXES: Locking out" in m and ATTACKER in m for m in logged), logged

    # The address is locked for every username, and not only at the login form's first step.
    assert _login(Client(), "clerk", "pw-long-enough-2", ATTACKER).status_code == 429

    # Another admin from another address is not affected, nor is boss from the office.
    clerk = Client()
    assert _login(clerk, "clerk", "pw-long-enough-2", OFFICE).status_code == 302
    assert _logged_in(clerk)
    boss = Client()
    assert _login(boss, "boss", "pw-long-enough-1", OFFICE).status_code == 302
    assert _logged_in(boss)


def test_the_lock_lifts_after_the_cool_off(admins, settings):
    from datetime import timedelta

    from django.utils import timezone

    for n in range(settings.AXES_FAILURE_LIMIT):
        _login(Client(), "boss", f"guess-{n}", ATTACKER)
    assert _login(Client(), "boss", "pw-long-enough-1", ATTACKER).status_code == 429
    # The cool-off is counted from the last failure: move that back past it.
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))

    client = Client()
    assert _login(client, "boss", "pw-long-enough-1", ATTACKER).status_code == 302
    assert _logged_in(client)


def test_a_few_typos_then_the_right_password_work_and_reset_the_count(admins, settings):
    for _ in range(2):
        for n in range(settings.AXES_FAILURE_LIMIT - 1):
            assert _login(Client(), "boss", f"typo-{n}", OFFICE).status_code == 200
        client = Client()
        assert _login(client, "boss", "pw-long-enough-1", OFFICE).status_code == 302
        assert not AccessAttempt.objects.filter(username="boss").exists()


def test_a_valid_account_does_not_reset_the_guesses_against_another(admins, settings):
    # One attacker, one account of their own: logging in with it between guesses at boss's password
    # must not wipe the address's count.
    limit = settings.AXES_FAILURE_LIMIT
    for n in range(limit - 1):
        assert _login(Client(), "boss", f"guess-{n}", ATTACKER).status_code == 200
    assert _login(Client(), "clerk", "pw-long-enough-2", ATTACKER).status_code == 302
    assert _login(Client(), "boss", "guess-last", ATTACKER).status_code == 429
    assert _login(Client(), "boss", "pw-long-enough-1", ATTACKER).status_code == 429


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "1.2.3.4", "10.0.0.2"),  # no proxy trusted: the header is the client's to write
        (1, "1.2.3.4", "1.2.3.4"),
        (1, "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # the left part is forged by the client
        (2, "6.6.6.6, 1.2.3.4, 10.0.0.9", "1.2.3.4"),
        (2, "1.2.3.4", "10.0.0.2"),  # fewer hops than proxies: not trusted
        (1, "not-an-address", "10.0.0.2"),
    ],
)
def test_the_address_counted_is_the_one_the_trusted_proxy_saw(rf, settings, proxies, forwarded, expected):
    settings.HUB_TRUSTED_PROXY_COUNT = proxies
    request = rf.post(LOGIN, REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


@pytest.mark.parametrize(
    ("username", "counted"),
    [
        ("x" * 1000, True),
        ("bo%ED%A0%80ss", True),
        ("%FF%FE", True),
        ("boss%00", False),  # the form refuses it before any password is checked
    ],
)
def test_odd_usernames_are_a_failed_login_not_a_500(admins, username, counted):
    # Sent as a browser would, percent-encoded: a NUL, an encoded surrogate, bytes that are not UTF-8.
    for _ in range(6):
        response = Client().post(
            LOGIN,
            f"username={username}&password=guess",
            content_type="application/x-www-form-urlencoded",
            REMOTE_ADDR=ATTACKER,
        )
        assert response.status_code in (200, 429)
    assert response.status_code == (429 if counted else 200)
