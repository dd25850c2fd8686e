"""Measure the admin on a large hub: fill the database named by DATABASE_URL with N events (100,000
by default; kept between runs), then time each admin page and count its queries.

    DATABASE_URL=postgres://root@127.0.0.1:5432/hub_admin .venv/bin/python bench/admin_pages.py [N]

Not part of the suite (it needs minutes and a database of its own); tests/admin/test_query_counts.py
pins the query counts on a small dataset.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from events.models import Event, Store  # noqa: E402
from routing.models import Attempt, Delivery, Notification, Subscription  # noqa: E402

BATCH = 5000
MESSAGES = ["order:new", "order:updated", "order:canceled", "shipment:confirm", "product:updated"]


def fill(total: int) -> None:
    have = Event.objects.count()
    if have >= total:
        print(f"{have} events already stored")
        return
    rng = random.Random(7)
    stores = [
        Store.objects.get_or_create(name=f"bench-store-{i}", defaults={"token_hash": f"{i:064d}"})[0] for i in range(3)
    ]
    subs = [
        Subscription.objects.get_or_create(
            name=f"bench-{name}", defaults={"url": f"https://{name}.example.com/hub", "message_types": ["*"]}
        )[0]
        for name in ("erp", "crm", "wms", "mail")
    ]
    now = timezone.now()
    started = time.monotonic()
    for offset in range(have, total, BATCH):
        events = []
        for n in range(offset, min(offset + BATCH, total)):
            message = MESSAGES[n % len(MESSAGES)]
            resource = message.split(":")[0]
            number = f"R{n // 3:07d}" if resource == "order" else f"X{n:07d}"
            events.append(
                Event(
                    store=stores[n % 3],
                    message=message,
                    message_id=f"bench-{n}",
                    payload={
                        resource: {"number": number, "total": "19.99", "line_items": [{"sku": "A", "quantity": 1}]}
                    },
                    resource_key=f"{resource}:{number}",
                    status=rng.choices(["delivered", "failed", "partially_failed", "queued"], [90, 4, 4, 2])[0],
                    created_at=now - timedelta(seconds=(total - n) * 26),  # about 30 days
                )
            )
        Event.objects.bulk_create(events)
        deliveries = []
        for event in events:
            for sub in subs[: 2 + event.pk % 2]:
                state = {"failed": "failed", "queued": "pending"}.get(event.status, "delivered")
                deliveries.append(
                    Delivery(
                        event=event,
                        subscription=sub,
                        state=state,
                        resource_key=event.resource_key,
                        attempt_count=1,
                        created_at=event.created_at,
                        next_attempt_at=event.created_at,
                        delivered_at=event.created_at if state == "delivered" else None,
                    )
                )
        Delivery.objects.bulk_create(deliveries)
        Attempt.objects.bulk_create(
            Attempt(
                delivery=d,
                number=1,
                started_at=d.created_at,
                request_method="POST",
                request_url="https://erp.example.com/hub",
                status_code=200 if d.state == "delivered" else 500,
                succeeded=d.state == "delivered",
                latency_ms=rng.randint(5, 400),
                response_body='{"ok": true}' if d.state == "delivered" else '{"error": "boom"}',
            )
            for d in deliveries
        )
        Notification.objects.bulk_create(
            Notification(
                event=e, subscription=subs[0], subject="Imported", resource_key=e.resource_key, created_at=e.created_at
            )
            for e in events[::10]
        )
        print(f"  {offset + len(events)} events ({time.monotonic() - started:.0f}s)", flush=True)
    # Failures fresh enough for the dashboard's last hour and day.
    Delivery.objects.filter(pk__in=Delivery.objects.filter(state="failed").order_by("-id").values("id")[:50]).update(
        updated_at=now
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE")


def measure(client: Client, url: str, runs: int = 5) -> tuple[float, float, int, float]:
    client.get(url)  # warm caches (templates, content types)
    times = []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    slowest = max(float(q["time"]) for q in captured.captured_queries) * 1000
    return statistics.median(times), max(times), len(captured), slowest


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    call_command("migrate", verbosity=0)
    fill(total)
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "b@example.com", "x")
    client = Client()
    client.force_login(user)
    event = Event.objects.filter(message="order:new", deliveries__state="failed").order_by("-id").first()
    failed = Delivery.objects.filter(state="failed").order_by("-id").first()
    sub = Subscription.objects.order_by("id").first()
    store = Store.objects.order_by("id").first()
    number = event.resource_key.split(":", 1)[1]
    pages = {
        "dashboard": "/admin/",
        "events": "/admin/events/event/",
        "events ?status=failed": "/admin/events/event/?status__exact=failed",
        "events ?message=order:new": "/admin/events/event/?message=order%3Anew",
        "events ?store": f"/admin/events/event/?store__id__exact={store.pk}",
        "events ?created_at past 7 days": "/admin/events/event/?created_at__gte="
        + (timezone.now() - timedelta(days=7)).date().isoformat(),
        "events ?q=message_id": f"/admin/events/event/?q={event.message_id}",
        "events ?q=order number": f"/admin/events/event/?q={number}",
        "event detail": f"/admin/events/event/{event.pk}/change/",
        "deliveries": "/admin/routing/delivery/",
        "deliveries ?state=failed": "/admin/routing/delivery/?state__exact=failed",
        "deliveries failed last hour": "/admin/routing/delivery/?state__exact=failed&changed=hour",
        "deliveries ?subscription": f"/admin/routing/delivery/?subscription__id__exact={sub.pk}",
        "deliveries ?q=order number": f"/admin/routing/delivery/?q={number}",
        "delivery detail": f"/admin/routing/delivery/{failed.pk}/change/",
        "subscriptions": "/admin/routing/subscription/",
        "subscription detail": f"/admin/routing/subscription/{sub.pk}/change/",
        "stores": "/admin/events/store/",
        "order timeline": f"/admin/events/event/timeline/?order={number}",
    }
    print(
        f"{Event.objects.count()} events, {Delivery.objects.count()} deliveries, {Attempt.objects.count()} attempts "
        f"on {connection.vendor}"
    )
    print(f"{'page':34} {'median ms':>9} {'max ms':>7} {'queries':>7} {'slowest query ms':>16}")
    for name, url in pages.items():
        median, worst, queries, slowest = measure(client, url)
        print(f"{name:34} {median:9.1f} {worst:7.1f} {queries:7d} {slowest:16.1f}")


if __name__ == "__main__":
    main()
