"""A `match` filter runs on RE2, whose time is linear in the value whatever the pattern an admin
types: the classic catastrophic patterns route a push correctly, and patterns RE2 cannot run
(backreferences, lookaround) are refused by the form or, stored earlier, never match and are named."""

from __future__ import annotations

import json
import logging

import pytest
import re2
from django.core.checks import run_checks

from events.models import Event, EventStatus
from routing import matching
from routing.checks import match_filters_check
from routing.models import Delivery, Subscription
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

EVIL_VALUE = "a" * 27 + "!"  # with Python's `re`, (a+)+$ takes seconds on this and doubles per "a"


@pytest.fixture
def compiled(monkeypatch) -> list[str]:
    """The patterns RE2 compiles from now on (the caches are emptied so that none is skipped)."""
    seen: list[str] = []
    real = re2.compile

    def spy(pattern, options=None):
        seen.append(pattern)
        return real(pattern, options)

    matching._regex_compiled.cache_clear()
    matching._regex_for_routing.cache_clear()
    monkeypatch.setattr(matching.re2, "compile", spy)
    yield seen
    matching._regex_compiled.cache_clear()
    matching._regex_for_routing.cache_clear()


def _subscription(name: str, pattern: str) -> Subscription:
    sub = SubscriptionFactory.build(
        name=name,
        url="https://erp.example.com/hub",
        message_types=["order:new"],
        filters=[{"path": "order.number", "op": "match", "value": pattern}],
    )
    sub.full_clean()  # what the admin form checks: these patterns are allowed
    sub.save()
    return sub


def test_catastrophic_patterns_route_a_push_correctly_on_re2(api, compiled):
    never = [_subscription("nested", r"(a+)+$"), _subscription("alternation", r"^(a|a)*$")]
    wanted = _subscription("matches", r"^(a+)+!$")

    body = {"message": "order:new", "message_id": "evil", "payload": {"order": {"number": EVIL_VALUE}}}
    response = api.post("/events", body, format="json")

    assert response.status_code == 202, response.content
    event = Event.objects.get(message_id="evil")
    assert list(Delivery.objects.filter(event=event).values_list("subscription_id", flat=True)) == [wanted.pk]
    assert not Delivery.objects.filter(subscription__in=never).exists()
    # Linear by construction: RE2 compiled every pattern routing used, and routing has no `re` at all.
    assert {r"(a+)+$", r"^(a|a)*$", r"^(a+)+!$"} <= set(compiled)
    assert all(isinstance(matching.regex_compile(s.filters[0]["value"]), type(re2.compile("x"))) for s in never)
    assert not hasattr(matching, "re")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        (r"^(a)\1$", "Filter 1 (match) uses a backreference"),
        (r"^(?P<x>a)(?P=x)$", "Filter 1 (match) uses a backreference"),
        (r"^(?=a)a+$", "Filter 1 (match) uses a lookahead"),
        (r"(?<!x)a", "Filter 1 (match) uses a lookbehind"),
        (r"a\Z", "RE2 spells the end of the text \\z"),
        (r"(\pL{1000})", "Filter 1 (match) is too large"),
    ],
)
def test_the_admin_form_refuses_what_re2_cannot_run(admin_client, pattern, says):
    body = {
        "name": "erp",
        "url": "https://erp.example.com/hub",
        "message_types": '["order:new"]',
        "filters": json.dumps([{"path": "order.number", "op": "match", "value": pattern}]),
        "filter_mode": "all",
        "parameters": "[]",
        "http_method": "",
        "timeout_seconds": "10",
        "retry_enabled": "on",
        "retry_schedule": "null",
        "is_enabled": "on",
        "disabled_reason": "",
    }
    response = admin_client.post("/admin/routing/subscription/add/", body)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["filters"], errors
    assert says in errors["filters"][0]
    assert "linear-time engine" in errors["filters"][0]
    assert not Subscription.objects.exists()


def test_a_stored_pattern_re2_refuses_never_matches_and_is_named(api, compiled, caplog):
    # Saved by an older version, which checked patterns with Python's `re` (no full_clean here).
    old = SubscriptionFactory(
        name="old", message_types=["order:new"], filters=[{"path": "order.number", "op": "match", "value": r"^(a)\1$"}]
    )

    with caplog.at_level(logging.WARNING, logger="routing.matching"):
        for n in range(3):
            body = {"message": "order:new", "message_id": f"m{n}", "payload": {"order": {"number": "aa"}}}
            assert api.post("/events", body, format="json").status_code == 202

    # Python's `re` would have matched "aa"; the pattern is not handed to it.
    assert not Delivery.objects.filter(subscription=old).exists()
    assert set(Event.objects.values_list("status", flat=True)) == {EventStatus.UNROUTED}
    logged = [r.getMessage() for r in caplog.records if "never matches" in r.getMessage()]
    assert len(logged) == 1, logged  # once per process and pattern, not once per event
    assert r"'^(a)\\1$' uses a backreference" in logged[0]

    # `manage.py check --database default` (and migrate) warn about it.
    warnings = [w for w in run_checks(databases=["default"]) if w.id == "hub.W003"]
    assert len(warnings) == 1
    assert f"Subscription {old.pk} (old): filter 1 (match) uses a backreference" in warnings[0].msg
    assert match_filters_check(databases=None) == []
