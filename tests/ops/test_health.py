import json
import os
import socket
import subprocess

import pytest

from integrator.celery import app as celery_app
from tests.ops.conftest import ROOT, free_port


def test_healthz_answers_without_touching_the_database(client):
    # No `db` fixture: pytest-django fails any query, so this proves the probe stays off the database.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_healthz_and_readyz_need_no_token_and_only_answer_get(client, db):
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


@pytest.mark.django_db
def test_readyz_reports_database_and_broker_with_latency(client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert isinstance(check["latency_ms"], float) and check["latency_ms"] >= 0


@pytest.mark.django_db
def test_readyz_is_503_when_the_broker_is_unreachable(client):
    # A real broker URL with nothing listening, not a mock: the probe has to connect and fail.
    saved = celery_app.conf.broker_url
    celery_app.conf.broker_url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    try:
        response = client.get("/readyz")
    finally:
        celery_app.conf.broker_url = saved
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["broker"]["error"]
    assert "s3cret" not in response.content.decode()


def readyz_in_process(python: str, database_url: str, **env: str) -> dict:
    """GET /readyz in a separate process whose settings read `database_url`."""
    code = (
        "import django, json; django.setup();"
        "from django.test import Client;"
        "r = Client().get('/readyz');"
        "print(json.dumps({'status': r.status_code, 'body': r.json()}))"
    )
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="integrator.settings", DATABASE_URL=database_url, **env)
    # The subprocess timeout only keeps a regression from hanging the suite.
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_readyz_is_503_when_the_database_is_unreachable(python):
    # Nobody listens on that port.
    result = readyz_in_process(python, f"postgres://hub:pw@127.0.0.1:{free_port()}/nowhere?connect_timeout=2")
    assert result["status"] == 503
    assert result["body"]["checks"]["database"]["ok"] is False
    assert "pw@" not in json.dumps(result)


def test_readyz_is_503_when_the_database_accepts_but_never_answers(python):
    # A listener that completes the TCP handshake (the kernel does) but never speaks: the shape of
    # a hung or blackholed database. Without a connect timeout libpq would wait forever.
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        port = blackhole.getsockname()[1]
        result = readyz_in_process(python, f"postgres://hub@127.0.0.1:{port}/nowhere", DB_CONNECT_TIMEOUT="1")
    assert result["status"] == 503
    assert result["body"]["checks"]["database"]["ok"] is False
    assert "timeout" in result["body"]["checks"]["database"]["error"].lower()
