"""A slow endpoint's churn: `python -m bench.churn [DELAY ...]`, deliveries claimed and given back
unsent per delivery sent, in one process, without Celery.

For each DELAY (seconds a reply takes; 0.05 and 0.25), a backlog of unordered deliveries to one
endpoint (in-flight limit 1) served by tests.live's subscriber, which answers each request after
DELAY; pumps run one after another in-process, as a worker's tasks would, until all are
delivered, with a pump's budget of BENCH_CHURN_PUMP_SECONDS (1 s; a shorter budget stands for a
slower endpoint at the default 5 s). Prints, per delay: what the first pump claimed and
delivered (a process's first batch for an endpoint), then over the pumps after it the deliveries
claimed, delivered, and claimed-and-given-back per delivered, on the DATABASE_URL of the
environment.
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> None:
    delays = [float(a) for a in argv] or [0.05, 0.25]
    os.environ["HUB_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    os.environ.setdefault("HUB_DELIVERY_PUMP_SECONDS", os.environ.get("BENCH_CHURN_PUMP_SECONDS", "1"))
    # The hand-overs at the budget go to a queue of their own, purged at the end.
    os.environ["CELERY_QUEUE"] = f"churn-{os.getpid()}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")
    import django

    django.setup()
    import logging

    from django.conf import settings
    from django.core.management import call_command

    from routing import pump
    from routing.models import Delivery
    from tests.factories import DeliveryFactory, EventFactory, StoreFactory, SubscriptionFactory
    from tests.live import Reply, Subscriber, queue_purge

    call_command("migrate", verbosity=0, interactive=False)
    logging.disable(logging.INFO)
    subscriber = Subscriber().start()
    claimed: list[int] = []
    claim = pump.batch_claim

    def watched(**kwargs):  # the real claim, counted
        batch = claim(**kwargs)
        if batch is not None:
            claimed.append(len(batch.deliveries))
        return batch

    pump.batch_claim = watched
    budget = settings.HUB_DELIVERY_PUMP_SECONDS
    try:
        for delay in delays:
            # About ten pumps' worth at this delay.
            count = max(10, round(10 * budget / delay))
            path = f"/slow-{delay}"
            subscriber.program(path, Reply.slow(delay))
            sub = SubscriptionFactory(name=f"churn-{os.getpid()}-{delay}", url=subscriber.url(path), max_in_flight=1)
            store = StoreFactory(name=f"{sub.name}-store")
            for n in range(count):
                event = EventFactory(store=store, message_id=f"{sub.name}-{n}", payload={"n": n}, resource_key=None)
                DeliveryFactory(subscription=sub, event=event)
            # Per pump: deliveries claimed, delivered.
            pumps: list[tuple[int, int]] = []
            started = time.monotonic()
            while sum(d for _, d in pumps) < count:
                claimed.clear()
                result = pump.deliveries_pump(subscription_id=sub.pk)
                pumps.append((sum(claimed), list(result.verdicts.values()).count("delivered")))
            first, rest = pumps[0], pumps[1:]
            taken, delivered = sum(c for c, _ in rest), sum(d for _, d in rest)
            print(
                f"delay {delay:g} s, budget {budget:g} s, batch {settings.HUB_DELIVERY_BATCH_SIZE}:"
                f" first pump {first[0]} claimed for {first[1]} delivered; then {len(rest)} pumps,"
                f" {taken} claimed for {delivered} delivered, {(taken - delivered) / max(delivered, 1):.2f}"
                f" given back per delivered ({time.monotonic() - started:.1f} s)"
            )
            Delivery.objects.filter(subscription=sub).delete()
            sub.delete()
    finally:
        subscriber.stop()
        queue_purge(os.environ["CELERY_QUEUE"])


if __name__ == "__main__":
    main(sys.argv[1:])
