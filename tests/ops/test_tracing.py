"""OpenTelemetry tracing (infra/tracing.py): one trace per event, from the push through each
attempt, with the SDK's in-memory exporter; and with tracing off, nothing set up at all."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from events.models import Event
from infra import tracing
from routing.models import Delivery
from routing.pump import deliveries_pump
from tests.factories import SubscriptionFactory
from tests.live import Reply
from tests.ops.conftest import ROOT, hub_env

pytestmark = pytest.mark.django_db


@pytest.fixture
def exporter(settings):
    settings.HUB_OTEL_ENABLED = True
    memory = InMemorySpanExporter()
    assert tracing.tracing_setup(span_processor=SimpleSpanProcessor(memory))
    try:
        yield memory
    finally:
        tracing.tracing_teardown()


def test_the_push_and_every_attempt_are_one_trace(exporter, store, client_for, subscriber, unconsumed_queue):
    sub = SubscriptionFactory(url=subscriber.url("/traced"), message_types=["order:new"], retry_schedule=[0])
    subscriber.program("/traced", Reply.error(503), Reply.ok())
    api = client_for(store)  # made after tracing is on: its handler loads the Django instrumentation
    pushed = api.post("/events", {"message": "order:new", "payload": {"order": {"number": "R7"}}}, format="json")
    assert pushed.status_code == 202
    event = Event.objects.get(uid=pushed.json()["event_id"])
    delivery = Delivery.objects.get(event=event)
    assert event.traceparent.startswith("00-")

    # Attempts run later, in a worker: here the pump, called directly, once per attempt.
    deliveries_pump(subscription_id=sub.pk)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=event.created_at)
    deliveries_pump(subscription_id=sub.pk)
    assert len(subscriber.received("/traced")) == 2

    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.kind == SpanKind.SERVER]
    (event_span,) = [s for s in spans if s.name == "hub.event"]
    attempts = sorted((s for s in spans if s.name == "hub.delivery.attempt"), key=lambda s: s.start_time)
    assert len(attempts) == 2
    trace_id = request.context.trace_id
    assert event_span.context.trace_id == trace_id and event_span.parent.span_id == request.context.span_id
    assert event_span.attributes["hub.event.id"] == str(event.uid)
    for number, (attempt, status) in enumerate(zip(attempts, (503, 200), strict=True), start=1):
        assert attempt.context.trace_id == trace_id
        assert attempt.parent.span_id == event_span.context.span_id
        assert dict(attempt.attributes) == {
            "hub.event.id": str(event.uid),
            "hub.delivery.id": delivery.pk,
            "hub.subscription.id": sub.pk,
            "hub.subscription.name": sub.name,
            "hub.attempt.number": number,
            "http.response.status_code": status,
        }
        assert attempt.status.status_code == (StatusCode.ERROR if status == 503 else StatusCode.UNSET)
        # The outbound request (requests instrumentation) is the attempt's child.
        (client,) = [s for s in spans if s.kind == SpanKind.CLIENT and s.parent.span_id == attempt.context.span_id]
        assert client.context.trace_id == trace_id


def test_with_tracing_off_a_push_stores_no_trace_and_nothing_is_instrumented(api, settings):
    assert not settings.HUB_OTEL_ENABLED
    assert tracing.tracing_setup() is False and not tracing.tracing_enabled()
    pushed = api.post("/events", {"message": "order:new", "payload": {}}, format="json")
    assert Event.objects.get(uid=pushed.json()["event_id"]).traceparent == ""
    assert not any("opentelemetry" in m for m in settings.MIDDLEWARE)


def test_with_tracing_off_the_web_and_worker_set_up_no_tracing():
    """The hot path's cost off: one check of a module variable. No instrumentation is loaded and no
    tracer provider is set (redis-py may import the OpenTelemetry API for its own optional metrics;
    that loads a library, it traces nothing)."""
    check = (
        "import sys, integrator.wsgi; from integrator.celery import app; from infra import tracing;"
        "app.loader.import_default_modules(); tracing.tracing_setup();"
        "prefixes = ('opentelemetry.instrumentation', 'opentelemetry.exporter');"
        "loaded = sorted(m for m in sys.modules if m.startswith(prefixes));"
        "assert not loaded, loaded;"
        "trace = sys.modules.get('opentelemetry.trace');"
        "assert trace is None or type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, env=hub_env(HUB_OTEL_ENABLED=""), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_probes_and_scrapes_make_no_trace(exporter):
    from django.test import Client

    client = Client()  # made after tracing is on
    for path in ("/healthz", "/metrics"):
        assert client.get(path).status_code == 200
    assert exporter.get_finished_spans() == ()
    client.get("/events")  # a store's request (here refused: no token) is traced
    assert [s.kind for s in exporter.get_finished_spans()] == [SpanKind.SERVER]
