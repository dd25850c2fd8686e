"""The reply forms of both protocol generations (routing.reply_forms), as pure functions: a
summary read and bounded, parameters as a list or an object merged by one rule and one set of
limits, what the next request of a batch carries, and summaries shown as notes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from routing.reply_forms import (
    SUMMARY_MAX_CHARS,
    ParametersRefused,
    attempt_summary,
    parameters_after_reply,
    parameters_merged,
    parameters_returned,
    reply_summary,
    summary_notes,
)


@pytest.mark.parametrize(
    ("reply", "summary"),
    [
        ({"request_id": "1", "summary": "Order R1 sent to the ERP"}, "Order R1 sent to the ERP"),
        ({"summary": "  two\n lines  "}, "two lines"),
        ({"summary": 5}, ""),
        ({"summary": None}, ""),
        ({}, ""),
        (["summary"], ""),
        (None, ""),
    ],
)
def test_a_summary_is_a_string_or_nothing(reply, summary):
    assert reply_summary(reply) == summary


def test_a_long_summary_is_cut():
    summary = reply_summary({"summary": "x" * 5000})
    assert len(summary) == SUMMARY_MAX_CHARS and summary.endswith("…")


def test_a_refusal_s_summary_is_read_from_the_body_kept():
    body = json.dumps({"request_id": "1", "summary": "Cannot reach the ERP"})
    assert attempt_summary(reply=None, succeeded=False, status_code=500, response_body=body) == "Cannot reach the ERP"
    # Cut mid-JSON, not JSON, or no answer at all: nothing.
    assert attempt_summary(reply=None, succeeded=False, status_code=500, response_body=body[:20]) == ""
    assert attempt_summary(reply=None, succeeded=False, status_code=502, response_body="<html>") == ""
    assert attempt_summary(reply=None, succeeded=False, status_code=None, response_body=body) == ""
    assert attempt_summary(reply={"summary": "done"}, succeeded=True, status_code=200, response_body="") == "done"


@pytest.mark.parametrize(
    ("value", "returned"),
    [
        ([{"name": "a", "value": 1}], [{"name": "a", "value": 1}]),
        ({"a": 1, "b": {"c": 2}}, [{"name": "a", "value": 1}, {"name": "b", "value": {"c": 2}}]),
        ({"name": "cursor", "value": "2"}, [{"name": "cursor", "value": "2"}]),
        (
            {"name": "cursor", "value": "2", "page": 1},
            [{"name": "name", "value": "cursor"}, {"name": "value", "value": "2"}, {"name": "page", "value": 1}],
        ),
        ({}, None),
        ([], None),
        ("a=1", None),
        (None, None),
    ],
)
def test_parameters_as_an_object_are_the_list_form(value, returned):
    assert parameters_returned(value) == returned


def test_returned_parameters_replace_and_add_and_the_rest_stay():
    current = [{"name": "key", "value": "k"}, {"name": "since", "value": "1"}]
    merged = parameters_merged(current, parameters_returned({"since": "2", "page": 3}))
    assert merged == [{"name": "key", "value": "k"}, {"name": "since", "value": "2"}, {"name": "page", "value": 3}]
    assert parameters_merged(current, [{"value": "nameless"}, {"name": "", "value": 1}, "x"]) == current


def test_a_merge_past_the_limits_is_refused_whole(settings):
    settings.HUB_MAX_PARAMETERS = 3
    with pytest.raises(ParametersRefused, match="HUB_MAX_PARAMETERS"):
        parameters_merged([{"name": "a", "value": 1}], parameters_returned({"b": 1, "c": 1, "d": 1}))
    settings.HUB_MAX_PARAMETERS = 50
    settings.HUB_MAX_PARAMETERS_BYTES = 100
    with pytest.raises(ParametersRefused, match="HUB_MAX_PARAMETERS_BYTES"):
        parameters_merged([], parameters_returned({"big": "x" * 200}))


def test_a_merge_that_changes_nothing_is_not_refused_for_what_is_already_there(settings):
    settings.HUB_MAX_PARAMETERS = 1
    current = [{"name": "a", "value": 1}, {"name": "b", "value": 2}]
    assert parameters_merged(current, [{"name": "a", "value": 1}]) == current


def test_the_next_request_carries_what_a_successful_reply_returned(settings):
    current = [{"name": "key", "value": "k"}]
    after = parameters_after_reply(current, succeeded=True, reply={"summary": "ok", "parameters": {"since": "2"}})
    assert after == [{"name": "key", "value": "k"}, {"name": "since", "value": "2"}]
    # A failed attempt's reply is not read; nothing returned or a refused merge leaves them as they were.
    assert parameters_after_reply(current, succeeded=False, reply={"parameters": {"since": "2"}}) == current
    assert parameters_after_reply(current, succeeded=True, reply={"ok": True}) == current
    assert parameters_after_reply(current, succeeded=True, reply=None) == current
    settings.HUB_MAX_PARAMETERS = 1
    assert parameters_after_reply(current, succeeded=True, reply={"parameters": {"since": "2"}}) == current


def test_summaries_become_notes_in_time_order_with_their_level():
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def attempt(number, seconds, succeeded, summary, status=200):
        return SimpleNamespace(
            number=number,
            started_at=at + timedelta(seconds=seconds),
            status_code=status,
            succeeded=succeeded,
            summary=summary,
        )

    notes = summary_notes(
        [
            ("erp", attempt(2, 10, True, "Order R1 imported")),
            ("erp", attempt(1, 0, False, "ERP down", status=500)),
            ("shop", attempt(1, 5, True, "")),
        ]
    )
    assert [(n.level, n.subject, n.subscription) for n in notes] == [
        ("warn", "ERP down", "erp"),
        ("info", "Order R1 imported", "erp"),
    ]
    assert notes[0].description == "Summary of attempt 1 to erp (HTTP 500): ERP down"
