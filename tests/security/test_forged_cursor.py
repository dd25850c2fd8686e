"""A forged `cursor` on GET /events is a 400 naming the cursor, never a 500: the cursor is base64 of
a query string a client can write by hand, and its position goes into the database query."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.django_db


def _cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _push(api, n: int) -> None:
    body = {"message": "order:new", "message_id": f"m{n}", "payload": {"order": {"number": f"R{n}"}}}
    assert api.post("/events", body, format="json").status_code == 202


def _assert_refused(response) -> None:
    assert response.status_code == 400, (response.status_code, response.content[:300])
    body = response.json()
    assert body["error"] == "invalid_filter"
    assert body["field"] == "cursor"
    assert "'cursor' is not valid" in body["detail"]


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("p=abc"),  # the cD1hYmM=
        _cursor("p=%00"),
        _cursor("p=\x00"),
        _cursor("p=-1"),
        _cursor("p=1.5"),
        _cursor("p=١٢"),  # digits, but not ASCII ones
        _cursor("p=" + "9" * 40),  # beyond any id a database can hold
        _cursor("p=9223372036854775808"),  # one past PostgreSQL's bigint
        _cursor("o=abc"),
        _cursor("o=-5"),
        _cursor("r=2&p=abc"),
        _cursor("p="),
        _cursor("p= 1_0"),  # int() takes it; the hub never writes it
        "garbage",
        "%%%",
        _cursor("x" * 100_000),  # huge
        "A" * 8000,
    ],
)
def test_forged_cursor_is_a_400_naming_it(api, cursor):
    _push(api, 1)
    _assert_refused(api.get("/events?cursor=" + quote(cursor)))


def test_a_hand_written_cursor_that_is_well_formed_still_pages(api):
    for n in range(3):
        _push(api, n)
    everything = [e["event_id"] for e in api.get("/events").json()["results"]]
    # Below the largest id a database holds: every event, as the first page shows them.
    page = api.get("/events?cursor=" + quote(_cursor("p=9223372036854775807")))
    assert page.status_code == 200, page.content
    assert [e["event_id"] for e in page.json()["results"]] == everything


CURSORS = (
    st.text(max_size=300)
    | st.text(max_size=60).map(_cursor)
    | st.from_regex(r"\A[opr]=.{0,30}\Z").map(_cursor)
    | st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: _cursor(f"p={n}"))
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=CURSORS)
def test_no_cursor_is_a_500(api, text):
    response = api.get("/events", {"cursor": text})
    assert response.status_code in (200, 400), (text, response.status_code, response.content[:300])
    if response.status_code == 400:
        assert response.json()["field"] == "cursor"
