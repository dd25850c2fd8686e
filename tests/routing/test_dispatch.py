"""Waking endpoints (routing.wakeup) through the real broker and the real cache: a push does not
publish a second message for an endpoint whose message still waits for a worker."""

from __future__ import annotations

import threading

import pytest
from django.core.cache import caches

from infra import cache as hub_cache
from routing.wakeup import pump_started, pumps_enqueue


def test_a_waiting_message_absorbs_the_next_pushes_until_a_worker_looks(unconsumed_queue, settings):
    settings.HUB_PUMP_COALESCE_SECONDS = 60
    endpoint, other = 10**9, 10**9 + 1
    assert pumps_enqueue([endpoint], coalesce=True) == [endpoint]
    assert pumps_enqueue([endpoint, other], coalesce=True) == [other]  # endpoint's is still waiting
    pump_started(endpoint)  # its worker looks: what is committed after this needs a new message
    assert pumps_enqueue([endpoint], coalesce=True) == [endpoint]
    # Retries and hand-overs are never absorbed: they must come at their own time.
    assert pumps_enqueue([endpoint]) == [endpoint]
    assert pumps_enqueue([endpoint], countdown=5, coalesce=True) == [endpoint]
    pump_started(endpoint)
    pump_started(other)


def test_a_push_in_another_thread_sees_the_same_mark(unconsumed_queue, settings):
    """Web processes take pushes in threads: there celery's current app is its default one, which
    must be the hub's app (its queue names the mark), not celery's fallback app."""
    settings.HUB_PUMP_COALESCE_SECONDS = 60
    endpoint = 10**9 + 4
    assert pumps_enqueue([endpoint], coalesce=True) == [endpoint]
    published: list[list[int]] = []
    thread = threading.Thread(target=lambda: published.append(pumps_enqueue([endpoint], coalesce=True)))
    thread.start()
    thread.join()
    assert published == [[]]
    pump_started(endpoint)


def test_coalescing_off_publishes_for_every_push(unconsumed_queue, settings):
    settings.HUB_PUMP_COALESCE_SECONDS = 0
    endpoint = 10**9 + 2
    assert pumps_enqueue([endpoint], coalesce=True) == [endpoint]
    assert pumps_enqueue([endpoint], coalesce=True) == [endpoint]


def test_without_the_cache_each_process_still_coalesces(unconsumed_queue, settings, monkeypatch):
    """The cache is away (its backoff after a failure): pushes fall back to this process's own
    marks instead of publishing a message each, which buried workers after a Redis outage."""
    settings.HUB_PUMP_COALESCE_SECONDS = 60
    monkeypatch.setattr(hub_cache, "cache_down_until", [float("inf")])
    endpoint = 10**9 + 3
    assert pumps_enqueue([endpoint], coalesce=True) == [endpoint]
    assert pumps_enqueue([endpoint], coalesce=True) == []
    pump_started(endpoint)
    assert pumps_enqueue([endpoint], coalesce=True) == [endpoint]
    pump_started(endpoint)


def test_a_fan_out_publishes_for_the_endpoints_without_a_waiting_message(unconsumed_queue, settings):
    settings.HUB_PUMP_COALESCE_SECONDS = 60
    waiting, first, last = 10**9 + 5, 10**9 + 6, 10**9 + 7
    assert pumps_enqueue([waiting], coalesce=True) == [waiting]
    assert pumps_enqueue([first, waiting, last], coalesce=True) == [first, last]
    assert pumps_enqueue([first, waiting, last], coalesce=True) == []
    for endpoint in (waiting, first, last):
        pump_started(endpoint)
    assert pumps_enqueue([first, waiting, last], coalesce=True) == [first, waiting, last]
    for endpoint in (waiting, first, last):
        pump_started(endpoint)


def test_the_redis_cache_adds_several_keys_as_add_does_each():
    backend = caches["default"]
    if not hasattr(backend, "add_all"):
        pytest.skip("the Redis cache's")
    keys = ["hub-test-add-all-a", "hub-test-add-all-b"]
    backend.delete_many(keys)
    assert backend.add("hub-test-add-all-a", 1, timeout=60)
    assert backend.add_all(keys, 1, 60) == [False, True]
    assert backend.get("hub-test-add-all-b") == 1
    assert backend.add("hub-test-add-all-b", 1, timeout=60) is False
    client = backend._cache.get_client(write=True)
    assert 0 < client.ttl(backend.make_key("hub-test-add-all-b")) <= 60  # as add's, it expires
    backend.delete_many(keys)
    assert backend.add_all(keys, {"n": 2}, None) == [True, True]
    assert client.ttl(backend.make_key("hub-test-add-all-a")) == -1  # None: kept, as add keeps it
    assert backend.get_many(keys) == {key: {"n": 2} for key in keys}
    assert backend.add_all(keys, 1, 0.5) == [False, False]  # there already, as add says
    backend.delete_many(keys)
    assert backend.add_all(keys, 1, 0.5) == [True, True]  # under a second: added and gone, as add
    assert backend.get_many(keys) == {}


def test_an_event_to_several_endpoints_is_one_fan_out_message_naming_its_deliveries(unconsumed_queue, settings):
    from routing.wakeup import FANOUT_TASK, PUMP_TASK, deliveries_wake, pumps_started

    settings.HUB_PUMP_COALESCE_SECONDS = 60
    settings.HUB_FANOUT_MAX_ENDPOINTS = 32
    waiting, first, second, third = 10**9 + 11, 10**9 + 12, 10**9 + 13, 10**9 + 14
    assert pumps_enqueue([waiting], coalesce=True) == [waiting]
    # The endpoint whose pump message still waits needs none: that pump will see its delivery.
    assert deliveries_wake([(1, first), (2, waiting), (3, second), (4, third)]) == [
        (FANOUT_TASK, [[1, 3, 4], [first, second, third]])
    ]
    # Their marks stand until the fan-out's task starts: a push meanwhile publishes nothing.
    assert deliveries_wake([(5, first), (6, second)]) == []
    pumps_started([first, second])
    # One endpoint left without a message: a pump's, as for an event to one endpoint.
    assert deliveries_wake([(7, first), (8, third)]) == [(PUMP_TASK, [first])]
    pumps_started([waiting, first, second, third])


def test_a_fan_out_wider_than_the_limit_is_split_evenly_and_off_is_a_pump_each(unconsumed_queue, settings):
    from routing.wakeup import FANOUT_TASK, PUMP_TASK, deliveries_wake, pumps_started

    settings.HUB_PUMP_COALESCE_SECONDS = 60
    endpoints = [10**9 + 20 + n for n in range(5)]
    pairs = [(100 + n, endpoint) for n, endpoint in enumerate(endpoints)]
    settings.HUB_FANOUT_MAX_ENDPOINTS = 4
    # 5 over at most 4 a message: two messages, as even as can be.
    assert deliveries_wake(pairs) == [
        (FANOUT_TASK, [[100, 101], endpoints[:2]]),
        (FANOUT_TASK, [[102, 103, 104], endpoints[2:]]),
    ]
    pumps_started(endpoints)
    settings.HUB_FANOUT_MAX_ENDPOINTS = 2
    # A share of one is its endpoint's pump message.
    assert deliveries_wake(pairs[:3]) == [(PUMP_TASK, [endpoints[0]]), (FANOUT_TASK, [[101, 102], endpoints[1:3]])]
    pumps_started(endpoints)
    settings.HUB_FANOUT_MAX_ENDPOINTS = 0
    assert deliveries_wake(pairs) == [(PUMP_TASK, [endpoint]) for endpoint in endpoints]
    pumps_started(endpoints)


def test_a_batch_of_few_events_for_its_endpoints_is_a_fan_out_each_else_a_pump_each(unconsumed_queue, settings):
    from routing.wakeup import FANOUT_TASK, PUMP_TASK, batch_wake, pumps_started

    settings.HUB_PUMP_COALESCE_SECONDS = 60
    settings.HUB_FANOUT_MAX_ENDPOINTS = 32
    waiting, *e = [10**9 + 40 + n for n in range(9)]
    assert pumps_enqueue([waiting], coalesce=True) == [waiting]
    # Four events for nine endpoints: a message each, but none for the endpoint whose message
    # waits, and one pump message for an endpoint two events go to alone.
    first = [(1, 11, waiting), (1, 12, e[0]), (1, 13, e[1])]
    second = [(2, 20 + n, e[2 + n]) for n in range(6)]
    assert batch_wake([*first, *second, (3, 31, e[7]), (4, 41, e[7])]) == [
        (FANOUT_TASK, [[12, 13], e[:2]]),
        (FANOUT_TASK, [[20, 21, 22, 23, 24, 25], e[2:8]]),
        (PUMP_TASK, [e[7]]),
    ]
    # Their marks stand until their tasks start: a batch meanwhile publishes nothing.
    assert batch_wake([(5, 51, e[0]), (5, 52, e[1])]) == []
    pumps_started([waiting, *e])
    # More than half as many events as endpoints: each endpoint's pump sends all of its share.
    many = [(event, event * 10 + n, e[n]) for event in range(6, 10) for n in range(3)]
    assert batch_wake(many) == [(PUMP_TASK, [endpoint]) for endpoint in e[:3]]
    pumps_started(e)
    # Off: a pump message each, whatever the shape.
    settings.HUB_FANOUT_MAX_ENDPOINTS = 0
    assert batch_wake(second) == [(PUMP_TASK, [endpoint]) for endpoint in e[2:8]]
    pumps_started(e)


def test_a_broker_failure_mid_fan_out_clears_the_marks_of_the_unpublished_only(unconsumed_queue, settings, monkeypatch):
    """The first message goes out, the broker fails on the second: the endpoints of the second
    and of every later message lose their marks (the next push publishes for them), the first's
    keep theirs (its message waits for a worker). The failure is logged, not raised: its log line
    once carried an extra named 'args', which logging refuses with a KeyError, out of the push's
    on_commit after the event was committed."""
    from celery import current_app

    from routing import wakeup
    from routing.wakeup import FANOUT_TASK, deliveries_wake, pumps_started

    settings.HUB_PUMP_COALESCE_SECONDS = 60
    settings.HUB_FANOUT_MAX_ENDPOINTS = 2
    endpoints = [10**9 + 60 + n for n in range(6)]
    pairs = [(200 + n, endpoint) for n, endpoint in enumerate(endpoints)]
    real_send = current_app.send_task
    sent: list[object] = []

    def second_fails(name, *args, **kwargs):
        if sent:
            raise ConnectionError("broker down")
        sent.append(name)
        return real_send(name, *args, **kwargs)

    monkeypatch.setattr(current_app, "send_task", second_fails)
    try:
        assert deliveries_wake(pairs) == [(FANOUT_TASK, [[200, 201], endpoints[:2]])]
        monkeypatch.setattr(current_app, "send_task", real_send)
        wakeup._broker_down_until[0] = 0.0
        assert deliveries_wake(pairs) == [
            (FANOUT_TASK, [[202, 203], endpoints[2:4]]),
            (FANOUT_TASK, [[204, 205], endpoints[4:]]),
        ]
    finally:
        wakeup._broker_down_until[0] = 0.0
        pumps_started(endpoints)
