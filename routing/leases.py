"""Keeping a batch's lease alive while its worker sends it.

A claim's lease is short (HUB_LEASE_SECONDS), so that a worker that dies (SIGKILL, OOM, a lost
host) frees its deliveries and the endpoint's in-flight slots within seconds, not after the
longest a batch could last. A live worker keeps its claims' leases from running out: one
heartbeat thread per process extends every claim the process holds, one UPDATE per claim token,
fenced on the token (a claim the sweeper took back is no longer extended). An attempt still on
the wire is thus never handed to a second worker, however long it lasts.

A heartbeat never extends a claim past its hold limit, the longest its batch may take (the pump's
budget, the endpoint's timeout and HUB_DELIVERY_LEASE_MARGIN_SECONDS: routing.claim.lease_seconds):
a process whose sending thread hangs outside any exchange still lets its deliveries go by then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from routing import sql
from routing.perprocess import PerProcess

logger = logging.getLogger(__name__)

# The attempt the sweeper records for a delivery sent alone whose lease ran out: the request may
# have been made, its answer is unknown. A stale worker's real answer replaces it (routing.record).
LEASE_EXPIRED_ERROR = "the worker sending this attempt stopped before recording an answer (lease expired)"


@dataclass
class Held:
    subscription_id: int
    claim: int
    # The latest a heartbeat may extend the lease to.
    hold_until: datetime


def renew_interval() -> float:
    """How often the heartbeat extends the leases: four times a lease, so that one late or failed
    round still leaves most of it."""
    return max(settings.HUB_LEASE_SECONDS / 4, 0.05)


def leases_renew(held: list[Held], *, now: datetime | None = None) -> int:
    """Extend each claim's lease to HUB_LEASE_SECONDS from now (no further than its hold limit),
    one UPDATE per claim token; how many deliveries it extended."""
    now = now or timezone.now()
    renewed = 0
    with connection.cursor() as cursor:
        for item in held:
            expires = min(now + timedelta(seconds=settings.HUB_LEASE_SECONDS), item.hold_until)
            cursor.execute(
                sql.leases_renew(),
                [connection.ops.adapt_datetimefield_value(expires), item.subscription_id, item.claim],
            )
            renewed += cursor.rowcount
    return renewed


class _Heartbeat:
    """One daemon thread per process that renews the leases of the claims registered with it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[int, Held] = {}
        self._wakeup = threading.Event()
        threading.Thread(target=self._run, name="hub-lease-heartbeat", daemon=True).start()

    def hold(self, item: Held) -> None:
        with self.lock:
            self.held[item.claim] = item

    def release(self, claim: int) -> None:
        with self.lock:
            self.held.pop(claim, None)

    def _run(self) -> None:
        while True:
            time.sleep(renew_interval())
            with self.lock:
                held = list(self.held.values())
            try:
                if held:
                    leases_renew(held)
                else:
                    # Idle: no connection kept open for nothing.
                    connection.close()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the heartbeat
                logger.warning("could not renew the leases of the deliveries being sent", exc_info=True)
                try:
                    connection.close()
                except Exception:  # noqa: BLE001 - already broken; the next round reconnects
                    pass


_heartbeat = PerProcess(lambda: _Heartbeat()).get


@contextmanager
def lease_held(*, subscription_id: int, claim: int, hold_until: datetime) -> Iterator[None]:
    """Keep the claim's lease alive while the block runs (sending and recording its batch)."""
    beat = _heartbeat()
    beat.hold(Held(subscription_id=subscription_id, claim=claim, hold_until=hold_until))
    try:
        yield
    finally:
        beat.release(claim)
