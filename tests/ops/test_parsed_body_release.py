"""A request's parsed body is freed when the request ends, not left to the cyclic garbage
collector by DRF's request/view/response reference cycle (integrator/memory.py)."""

from __future__ import annotations

import gc
import weakref

import pytest

from events.parsers import HubJSONParser

pytestmark = pytest.mark.django_db


class WatchedList(list):
    """A list that can be weakly referenced (a plain one cannot)."""


@pytest.fixture
def parsed_bodies(monkeypatch) -> list[weakref.ref]:
    """Weak references to every (list) body HubJSONParser returns."""
    seen: list[weakref.ref] = []
    parse = HubJSONParser.parse

    def watched(self, *args, **kwargs):
        data = WatchedList(parse(self, *args, **kwargs))
        seen.append(weakref.ref(data))
        return data

    monkeypatch.setattr(HubJSONParser, "parse", watched)
    return seen


@pytest.mark.parametrize("path", ["/events", "/events/batch"])
def test_parsed_body_is_freed_when_the_request_ends(api, parsed_bodies, path):
    body = [{"message": "order:new", "message_id": f"rel-{i}", "payload": {"n": i}} for i in range(3)]
    gc.collect()
    gc.disable()  # only reference counting may free it
    try:
        response = api.post(path, body, format="json")
        assert response.status_code == 200, response.content
        assert response.json()["accepted"] == 3
        del response
        assert len(parsed_bodies) == 1
        assert parsed_bodies[0]() is None
    finally:
        gc.enable()


def test_without_the_release_drfs_cycle_keeps_the_body(api, parsed_bodies, settings):
    """What the middleware is for: the same request without it leaves the body to the collector."""
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != "integrator.memory.ParsedBodyReleaseMiddleware"]
    gc.collect()
    gc.disable()
    try:
        response = api.post("/events/batch", [{"message": "order:new", "payload": {}}], format="json")
        assert response.status_code == 200
        del response
        assert parsed_bodies[0]() is not None
        gc.collect()
        assert parsed_bodies[0]() is None
    finally:
        gc.enable()
