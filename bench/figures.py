"""Measurements that the bench's phases and the chaos run (bench/chaos.py) both take: the stall of
an endpoint after a SIGKILL of the worker processes holding its in-flight slots, and the rates of
the first and last part of one order's chain."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench.stack import children, connected_to, wait_for


@dataclass(frozen=True)
class Stall:
    # Seconds from the SIGKILL until another order's event, pushed then, reached the endpoint.
    other: float
    # Seconds from the SIGKILL until the deliveries the killed processes held were sent again.
    held: float
    # How many processes were SIGKILLed.
    killed: int


def slots_held(subscription_id: int, slots: int = 2, timeout: float = 30) -> None:
    """Wait until `slots` batches of the endpoint are being sent (each holds one in-flight slot)."""
    from routing.models import Delivery

    wait_for(
        lambda: (
            Delivery.objects.filter(subscription_id=subscription_id, state="delivering")
            .values("claim")
            .distinct()
            .count()
            >= slots
        ),
        timeout,
        f"{slots} batches holding the endpoint's slots",
        0.05,
    )


def stall_after_sigkill(
    *,
    subscription_id: int,
    workers: Iterable[int],
    port: int,
    push_other: Callable[[], Callable[[], bool]],
    held_again: Callable[[], bool],
    timeout: float = 600,
) -> Stall:
    """With the endpoint's slots held by deliveries on the wire to `port`, SIGKILL the Celery pool
    processes of the `workers` (master pids) connected to it: those sending the held deliveries,
    and any other keeping a connection open; never a master or an embedded beat, whose sweeper
    must go on. Then `push_other()` pushes another order's event and returns whether it has
    arrived; `held_again()` says whether the held deliveries have been sent again."""
    slots_held(subscription_id)
    victims = connected_to([child for pid in workers for child in children(pid)], port)
    killed = time.time()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    arrived = push_other()
    wait_for(arrived, timeout, "the other order's delivery", 0.01)
    other = time.time() - killed
    wait_for(held_again, timeout, "the held deliveries sent again", 0.01)
    return Stall(other=other, held=time.time() - killed, killed=len(victims))


def chain_rates(times: list[float], part: int) -> tuple[float, float]:
    """Events per second over the first `part` and the last `part` of a chain's delivery times
    (sorted)."""
    first = (part - 1) / (times[part - 1] - times[0])
    last = (part - 1) / (times[-1] - times[-part])
    return first, last
