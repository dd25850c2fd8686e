"""Sending a claimed batch: one request per delivery, in claim order, over this process's
keep-alive session, until the pump's time is spent (the rest go back unsent). A resource's
delivery that does not succeed holds back the resource's later ones in the batch: they go back
unsent, and the other resources carry on."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from infra import metrics, tracing
from routing.claim import Batch
from routing.formats import RenderFailed, delivery_request
from routing.models import Delivery, Subscription
from routing.reply_forms import parameters_after_reply
from routing.transport.exchange import ExchangeResult, attempt_outcome, request_send

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sent:
    delivery: Delivery
    result: ExchangeResult
    started_at: datetime


def batch_send(batch: Batch, *, deadline: float) -> tuple[list[Sent], list[Delivery]]:
    """One request per delivery, in claim order, until `deadline` (time.monotonic) has passed:
    what was sent, and what was not (the pump's time spent, or held back by an earlier delivery of
    its resource that did not succeed in this batch)."""
    sub = batch.subscription
    previous_secret = sub.previous_signing_secret_active(timezone.now())
    sent: list[Sent] = []
    held: list[Delivery] = []
    # Resources whose delivery in this batch did not succeed: their later ones wait for its retry.
    stopped: set[str] = set()
    # What a reply returns goes out with the next request, this batch's too.
    parameters = list(sub.parameters or [])
    try:
        for index, delivery in enumerate(batch.deliveries):
            if index and time.monotonic() >= deadline:
                return sent, held + batch.deliveries[index:]
            if delivery.resource_key in stopped:
                held.append(delivery)
                continue
            sent.append(delivery_send(delivery, sub=sub, parameters=parameters, previous_secret=previous_secret))
            result = sent[-1].result
            parameters = parameters_after_reply(parameters, succeeded=result.succeeded, reply=result.reply)
            if not result.succeeded and delivery.resource_key is not None:
                stopped.add(delivery.resource_key)
        return sent, held
    finally:
        # Counted once the batch is sent (a task's time limit raising mid-batch too).
        attempts_count(sent)


def attempts_count(sent: list[Sent]) -> None:
    """The attempt metrics of requests made (delivery_send leaves them to its caller: written for
    a whole batch at once, they cost a fraction of what one write each does)."""
    metrics.attempts_observe([(attempt_outcome(s.result), s.result.latency_ms / 1000) for s in sent])


def delivery_send(delivery: Delivery, *, sub: Subscription, parameters: list[Any], previous_secret: str) -> Sent:
    """One claimed delivery's request, built, signed and sent; never raises, and touches no database
    (a fan-out calls it from threads of its own). Its attempt is counted by the caller (attempts_count)."""
    event = delivery.event
    started_at = timezone.now()
    span = tracing.attempt_start(delivery, sub)
    try:
        request = delivery_request(
            sub,
            event,
            store_name=_store_name(delivery),
            previous_signing_secret=previous_secret,
            parameters=parameters,
        )
        result = request_send(
            request,
            timeout=sub.timeout_seconds,
            body_max_chars=settings.HUB_RESPONSE_BODY_MAX_CHARS,
            read_max_bytes=settings.HUB_RESPONSE_READ_MAX_BYTES,
        )
    except RenderFailed as exc:
        result = exc.exchange_result()
    except Exception as exc:  # noqa: BLE001 - one delivery's fault must not lose the batch's outcomes
        logger.exception("could not send a delivery", extra={"delivery_id": delivery.pk})
        result = ExchangeResult(
            method="", url=sub.url, status_code=None, latency_ms=0, error=f"the hub could not send it: {exc!r}"
        )
    tracing.attempt_end(span, result)
    return Sent(delivery=delivery, result=result, started_at=started_at)


def _store_name(delivery: Delivery) -> str:
    """X-Hub-Store names the store the endpoint is configured for, else the store that pushed the event."""
    if delivery.subscription.store is not None:
        return delivery.subscription.store.name
    if delivery.event.store is not None:
        return delivery.event.store.name
    return ""
