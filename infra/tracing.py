"""Optional OpenTelemetry tracing, off unless HUB_OTEL_ENABLED: one trace per event, from the push
through each delivery attempt, however much later and in whichever worker the attempt happens.

The push's request span (Django instrumentation) gets an "event" span per stored event, whose
context is kept with the event (Event.traceparent, W3C format); each attempt span is that span's
child, linked to the Celery task that ran it, with the outbound request (requests instrumentation)
under it. Set up once per process from integrator/wsgi.py and the Celery worker's init. Off, no
OpenTelemetry module is imported and each hook costs one check of `_tracer`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, Tracer

    from events.models import Event
    from routing.models import Delivery, Subscription
    from routing.transport.exchange import ExchangeResult

logger = logging.getLogger(__name__)

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_instrumentors: list[Any] = []
_SERVICE_NAME = "event-hub"


def tracing_enabled() -> bool:
    return _tracer is not None


def tracing_setup(*, span_processor: SpanProcessor | None = None) -> bool:
    """Turn tracing on in this process when HUB_OTEL_ENABLED says so (idempotent). Spans go to
    `span_processor` when given (tests), else to the OTLP exporter (configured by the standard
    OTEL_EXPORTER_OTLP_* variables) or, without an endpoint, to the console."""
    global _tracer, _provider
    if _tracer is not None or not settings.HUB_OTEL_ENABLED:
        return _tracer is not None
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: _SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    if span_processor is None:
        provider.add_span_processor(BatchSpanProcessor(_exporter()))
        # The process-wide provider, for any other instrumented library; tests keep theirs local.
        trace.set_tracer_provider(provider)
    else:
        provider.add_span_processor(span_processor)
    django_instrumentor = DjangoInstrumentor()
    django_instrumentor.instrument(tracer_provider=provider, excluded_urls=settings.OTEL_PYTHON_DJANGO_EXCLUDED_URLS)
    _instrumentors.append(django_instrumentor)
    for instrumentor in (CeleryInstrumentor(), RequestsInstrumentor()):
        instrumentor.instrument(tracer_provider=provider)
        _instrumentors.append(instrumentor)
    _provider = provider
    _tracer = provider.get_tracer("integrator")
    logger.info("tracing on", extra={"exporter": "custom" if span_processor else settings.HUB_OTEL_EXPORTER})
    return True


def tracing_teardown() -> None:
    """Turn tracing off again (tests): the instrumentations are removed, spans are flushed."""
    global _tracer, _provider
    for instrumentor in _instrumentors:
        instrumentor.uninstrument()
    _instrumentors.clear()
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _exporter() -> Any:
    if settings.HUB_OTEL_EXPORTER == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


def event_traceparent(event: Event) -> str:
    """An "event" span under the current one (the push's request), ended at once; its context in
    W3C traceparent form, for the attempts to continue. "" when tracing is off."""
    if _tracer is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    store = event.store.name if event.store_id and event.store else ""
    with _tracer.start_as_current_span(
        "hub.event",
        attributes={"hub.event.id": str(event.uid), "hub.event.message": event.message, "hub.store": store},
    ):
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def attempt_start(delivery: Delivery, subscription: Subscription) -> tuple[Span, object] | None:
    """The span of one delivery attempt, made current so the outbound request's span is its child.
    A child of the event's span (from Event.traceparent), linked to the task that sends it. End it
    with attempt_end. None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    event = delivery.event
    parent = TraceContextTextMapPropagator().extract({"traceparent": event.traceparent}) if event.traceparent else None
    task = trace.get_current_span().get_span_context()
    span = _tracer.start_span(
        "hub.delivery.attempt",
        context=parent,
        kind=trace.SpanKind.INTERNAL,
        links=[trace.Link(task)] if task.is_valid else None,
        attributes={
            "hub.event.id": str(event.uid),
            "hub.delivery.id": delivery.pk,
            "hub.subscription.id": subscription.pk,
            "hub.subscription.name": subscription.name,
            "hub.attempt.number": delivery.attempt_count,
        },
    )
    return span, context.attach(trace.set_span_in_context(span))


def attempt_end(started: tuple[Span, object] | None, result: ExchangeResult) -> None:
    if started is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    span, token = started
    if result.status_code is not None:
        span.set_attribute("http.response.status_code", result.status_code)
    if not result.succeeded:
        span.set_status(Status(StatusCode.ERROR, (result.error or f"HTTP {result.status_code}")[:200]))
    span.end()
    context.detach(token)
