"""Switching the broker to RabbitMQ (docs/operations.md) tried for real against a local RabbitMQ;
skipped where none listens on 127.0.0.1:5672."""

import json
import socket
import subprocess
import time
import uuid

import pytest

from tests.ops.conftest import ROOT, hub_env

RABBIT = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbit_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not _rabbit_listening(), reason="no RabbitMQ on 127.0.0.1:5672"),
    pytest.mark.django_db(transaction=True),
]

READYZ = (
    "import django, json; django.setup();"
    "from django.test import Client;"
    "r = Client().get('/readyz');"
    "print(json.dumps({'status': r.status_code, 'body': r.json()}))"
)


def readyz(python: str, broker_url: str) -> dict:
    env = hub_env(CELERY_BROKER_URL=broker_url, DJANGO_SETTINGS_MODULE="integrator.settings")
    done = subprocess.run([python, "-c", READYZ], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_readyz_reaches_rabbitmq_when_it_is_the_broker(python):
    result = readyz(python, RABBIT)
    assert result["status"] == 200, result
    assert result["body"]["checks"]["broker"]["ok"] is True


def test_readyz_reports_rabbitmq_refusing_the_credentials(python):
    result = readyz(python, "amqp://guest:wrong-password@127.0.0.1:5672//")
    assert result["status"] == 503
    assert result["body"]["checks"]["broker"]["ok"] is False
    assert "wrong-password" not in json.dumps(result)


def test_a_worker_on_rabbitmq_answers_through_the_broker(python):
    # A queue and node name of its own, so parallel runs on the shared RabbitMQ never mix.
    name = f"ops-test-{uuid.uuid4().hex[:8]}"
    env = hub_env(CELERY_BROKER_URL=RABBIT, CELERY_QUEUE=name, LOG_LEVEL="WARNING")
    worker = subprocess.Popen(
        [python, "-m", "celery", "--app=integrator", "worker", "--concurrency=1", f"--hostname={name}@%h"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        answered = ""
        while time.monotonic() < deadline and "pong" not in answered:
            ping = subprocess.run(
                [
                    python,
                    "-m",
                    "celery",
                    "--app=integrator",
                    "inspect",
                    "ping",
                    "--timeout=3",
                    f"--destination={name}@{socket.gethostname()}",
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            answered = ping.stdout
        assert "pong" in answered, answered
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err.decode()[-2000:]
