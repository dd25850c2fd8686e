import http.client
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core import signals
from django.db import close_old_connections

from events.models import Event
from tests.factories import StoreFactory
from tests.ops.conftest import hub_env

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_limits(settings):
    settings.HUB_MAX_BODY_BYTES = 2000
    settings.HUB_MAX_JSON_DEPTH = 8
    settings.HUB_MAX_JSON_KEYS = 50


def _nested(depth: int) -> dict:
    """An envelope whose whole document is `depth` levels deep."""
    inner: dict = {}
    for _ in range(depth - 2):
        inner = {"a": inner}
    return {"message": "order:new", "payload": inner}


def test_body_over_the_limit_is_413_before_parsing(small_limits, api):
    body = json.dumps({"message": "order:new", "payload": {"x": "y" * 3000}})
    response = api.post("/events", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert "2000" in response.json()["detail"]
    assert Event.objects.count() == 0


def test_nesting_at_the_limit_is_accepted(small_limits, api):
    assert api.post("/events", _nested(8), format="json").status_code == 202


def test_nesting_deeper_than_the_limit_is_400_naming_it(small_limits, api):
    response = api.post("/events", _nested(9), format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "too_deep"
    assert body["limit"] == 8 and "8 levels" in body["detail"]
    assert Event.objects.count() == 0


def test_deep_arrays_count_as_nesting_too(small_limits, api):
    response = api.post(
        "/events", '{"message": "order:new", "payload": {"a": [[[[[[[[[1]]]]]]]]]}}', content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "too_deep"


def test_far_deeper_nesting_than_the_parser_allows_is_still_a_clean_400(api):
    response = api.post("/events", "[" * 5000 + "]" * 5000, content_type="application/json")
    assert response.status_code == 400


def test_more_object_keys_than_the_limit_is_413_naming_it(small_limits, api):
    payload = {f"k{i}": i for i in range(60)}
    response = api.post("/events", {"message": "order:new", "payload": payload}, format="json")
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "too_many_keys" and body["limit"] == 50
    assert Event.objects.count() == 0


def test_keys_are_counted_across_the_whole_document(small_limits, api):
    payload = {f"o{i}": {f"k{j}": j for j in range(9)} for i in range(5)}  # 5 + 45 + 2 envelope keys
    response = api.post("/events", {"message": "order:new", "payload": payload}, format="json")
    assert response.status_code == 413


@pytest.mark.parametrize("wrap", [list, lambda items: {"events": items}])
def test_a_batch_counts_keys_per_envelope(small_limits, settings, api, wrap):
    settings.HUB_MAX_BODY_BYTES = 20_000
    # 3 x (2 envelope keys + 1 + 30) = 99 keys in the body, 33 in each envelope: under the cap of 50.
    items = [{"message": "order:new", "payload": {"order": {f"k{j}": j for j in range(30)}}} for _ in range(3)]
    response = api.post("/events/batch", wrap(items), format="json")
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 3


def test_a_batch_with_one_envelope_over_the_key_cap_is_413_naming_it(small_limits, settings, api):
    settings.HUB_MAX_BODY_BYTES = 20_000
    items = [{"message": "order:new", "payload": {f"k{j}": j for j in range(n)}} for n in (10, 60, 10)]
    response = api.post("/events/batch", items, format="json")
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "too_many_keys" and body["limit"] == 50
    assert body["field"] == "events[1]" and "index 1" in body["detail"]
    assert Event.objects.count() == 0


def test_batch_envelopes_are_checked_as_one_document(small_limits, api):
    response = api.post("/events/batch", [_nested(8)], format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "too_deep"


@pytest.fixture
def wsgi_call():
    """Call the project's WSGI application the way a server does (with the test database)."""
    from integrator.wsgi import application

    # As Django's test client does: the request signals must not close the test's connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)

    def call(
        body: bytes, *, terminated: bool = True, token: str = "", stream: io.BytesIO | None = None, sized: bool = False
    ) -> tuple[str, dict, bytes]:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/events",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": stream or io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "CONTENT_TYPE": "application/json",
        }
        if sized:
            environ["CONTENT_LENGTH"] = str(len(body))
        else:
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        if token:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        if terminated:
            environ["wsgi.input_terminated"] = True
        seen: dict = {}

        def start_response(status, headers, exc_info=None):
            seen["status"], seen["headers"] = status, dict(headers)

        result = application(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return seen["status"], seen["headers"], content

    yield call
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def test_chunked_body_within_the_limit_reaches_the_api(small_limits, wsgi_call, store):
    body = json.dumps({"message": "order:new", "payload": {"order": {"number": "C1"}}}).encode()
    status, _, content = wsgi_call(body, token=store.token)
    assert status.startswith("202"), content
    assert Event.objects.get().resource_key == "order:C1"


def test_chunked_body_over_the_limit_is_413_without_content_length(small_limits, wsgi_call, store):
    body = json.dumps({"message": "order:new", "payload": {"x": "y" * 5000}}).encode()
    status, headers, content = wsgi_call(body, token=store.token)
    assert status.startswith("413")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(content)["error"] == "body_too_large"
    assert Event.objects.count() == 0


def test_chunked_body_from_a_server_that_cannot_dechunk_is_411(small_limits, wsgi_call, store):
    status, _, content = wsgi_call(b'{"message": "order:new", "payload": {}}', terminated=False, token=store.token)
    assert status.startswith("411")
    assert json.loads(content)["error"] == "length_required"


class UntouchableBody(io.BytesIO):
    """A request body that records whether anything read it."""

    reads = 0

    def read(self, *args):
        self.reads += 1
        return super().read(*args)

    readline = read


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("who", ["no token", "wrong token", "disabled store"])
def test_a_refused_push_never_reads_its_body(small_limits, wsgi_call, store, sized, who):
    """Authenticated from the headers first: neither the chunked-body cap nor the ingest metrics
    read (let alone parse) the body of a push that is refused."""
    body = b'{"message": "order:new", "payload": {}}'
    token = {"no token": "", "wrong token": "hub_not-a-token", "disabled store": store.token}[who]
    if who == "disabled store":
        store.is_active = False
        store.save()
    stream = UntouchableBody(body)
    status, _, content = wsgi_call(body, token=token, stream=stream, sized=sized)
    assert status.startswith("403" if who == "disabled store" else "401"), content
    assert stream.reads == 0
    assert Event.objects.count() == 0


def test_an_accepted_push_reads_its_body(small_limits, wsgi_call, store):
    body = b'{"message": "order:new", "payload": {}}'
    stream = UntouchableBody(body)
    status, _, content = wsgi_call(body, token=store.token, stream=stream, sized=True)
    assert status.startswith("202"), content
    assert stream.reads >= 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_gunicorn_answers_413_to_an_oversized_chunked_body():
    """The real server: gunicorn de-chunks, sends no Content-Length, and our cap still holds
    (once the sender is known: a wrong token is refused before the body is read)."""
    store = StoreFactory()
    port = _free_port()
    env = hub_env(HUB_MAX_BODY_BYTES="2000", LOG_LEVEL="WARNING")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "integrator.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"gunicorn did not start: {server.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.1)
        for token, status, error in ((store.token, 413, "body_too_large"), ("hub_whatever", 401, "unauthorized")):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            chunks = (b'{"message": "order:new", "payload": {"x": "' + b"y" * 500 for _ in range(10))
            conn.request(
                "POST",
                "/events",
                body=chunks,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                encode_chunked=True,
            )
            response = conn.getresponse()
            assert response.status == status
            assert json.loads(response.read())["error"] == error
            conn.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
