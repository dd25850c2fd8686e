"""Telling the workers which endpoints have deliveries due: one broker message per endpoint.

A message names a subscription, not a delivery: the worker that takes it sends that endpoint's due
deliveries, a batch at a time, until none is left (routing.pump). The database is the memory of what
is owed; a message is only a wake-up, so a repeated one costs a look and a lost one is made good by
the sweeper, which wakes every endpoint that has due deliveries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from django.conf import settings

logger = logging.getLogger(__name__)

# Until when (time.monotonic) this process leaves publishing to the sweeper after a broker failure.
_broker_down_until = [0.0]


def pumps_enqueue(subscription_ids: Iterable[int], *, countdown: float | None = None) -> list[int]:
    """Ask the workers to send these endpoints' due deliveries; returns the ids actually published.

    A broker outage is not the store's problem: the deliveries are durable and the sweeper wakes
    their endpoints once the broker is back."""
    from routing.tasks import deliveries_pump_task

    ids = list(dict.fromkeys(subscription_ids))
    if not ids or time.monotonic() < _broker_down_until[0]:
        # Right after a broker failure, trying again would make every push wait out the broker
        # client's connection attempts; the sweeper publishes for these endpoints later.
        return []
    published: list[int] = []
    for subscription_id in ids:
        try:
            if countdown:
                deliveries_pump_task.apply_async(args=[subscription_id], countdown=countdown)
            else:
                deliveries_pump_task.delay(subscription_id)
        except Exception:  # noqa: BLE001 - any broker failure; the database still holds the deliveries
            logger.warning(
                "broker unavailable; deliveries left for the sweeper", extra={"subscription_id": subscription_id}
            )
            _broker_down_until[0] = time.monotonic() + settings.HUB_BROKER_BACKOFF_SECONDS
            break
        published.append(subscription_id)
    return published
