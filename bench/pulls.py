"""The pulls phase (`python -m bench --only pulls`; not in the default run): schedules of as many
endpoints all due at the same moment, as at the top of a minute, and the seconds until the last
of their ticks reached its endpoint. Beat looks for due schedules every HUB_SCHEDULES_POLL_SECONDS,
so the figure includes up to one such wait. Baseline: the same number of requests sent straight
to the subscriber by as many clients as the worker has processes."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from bench.plan import HOST
from bench.stack import log, wait_for

if TYPE_CHECKING:
    from bench.phases import Bench

# How far ahead of now the schedules are made due: every one of them is stored by then.
LEAD_SECONDS = 2.0


def pulls(bench: Bench) -> None:
    from django.utils import timezone

    from routing.models import Schedule, Subscription

    count = bench.plan.pull_schedules
    log(f"pulls: {count:,} schedules due at the same moment")
    if "worker" not in bench.procs.running:
        bench.worker_start()
    body = bench.envelope("direct", 0)
    started = time.perf_counter()
    asyncio.run(bench._burst(count, body))
    baseline = time.perf_counter() - started

    Subscription.objects.update(is_enabled=False)
    subs = Subscription.objects.bulk_create(
        Subscription(name=f"bench-pull-{n}", url=f"http://{HOST}:{bench.sub_port}/pull", message_types=["bench:none"])
        for n in range(count)
    )
    bench.subscriber_reset()
    due = timezone.now() + timedelta(seconds=LEAD_SECONDS)
    Schedule.objects.bulk_create(Schedule(subscription=s, interval_seconds=3600, next_run_at=due) for s in subs)
    wait_for(lambda: bench.subscriber_stats()["count"] >= count, 600, f"{count:,} ticks", 0.2)
    times = sorted(bench.subscriber_stats()["received"].values())
    last = times[-1] - due.timestamp()
    log(f"pulls: first tick {times[0] - due.timestamp():.2f} s after the due time, last {last:.2f} s")
    bench.deliveries_settled()
    Schedule.objects.update(is_paused=True)
    Subscription.objects.update(is_enabled=False)
    bench.add(
        "pull_ticks",
        f"{count:,} schedules due at once, all ticks sent (s)",
        last,
        "s",
        baseline,
        f"{count:,} direct sends (s)",
    )
