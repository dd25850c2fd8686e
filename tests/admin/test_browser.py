"""The admin in a real browser: Debian's chromium driven by Playwright, against the live hub, a real
Celery worker and a real subscriber. An admin finds the delivery the endpoint refused, the endpoint
is fixed, "Retry now" is clicked, and the page shows it delivered."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from events.models import Event
from routing.models import Delivery
from tests.factories import SubscriptionFactory
from tests.live import Reply, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Where to copy the event page's screenshot (the README's docs/admin-event.png), when asked.
SCREENSHOT_ENV = "HUB_ADMIN_SCREENSHOT"

pytestmark = [
    pytest.mark.e2e,
    # The live server and the worker process must see what the test writes: real commits.
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"),
]


def test_admin_retries_a_failed_delivery_in_the_browser(live_server, worker, subscriber, api, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    # The ORM is used before and after the browser runs: Playwright's event loop makes Django
    # refuse synchronous queries while it is active.
    User.objects.create_superuser("boss", "boss@example.com", "pw-long-enough-1")
    subscriber.program("/erp", Reply.error(500))
    subscription = SubscriptionFactory(
        name="erp", url=subscriber.url("/erp"), message_types=["order:*"], retry_enabled=False
    )
    response = api.post("/events", {"message": "order:new", "payload": {"order": {"number": "R777"}}}, format="json")
    assert response.status_code == 202
    event = Event.objects.get(uid=response.json()["event_id"])
    delivery = Delivery.objects.get(event=event, subscription=subscription)
    wait_until(lambda: Delivery.objects.filter(pk=delivery.pk, state="failed").exists(), 30, message="delivery failed")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{live_server.url}/admin/login/?next=/admin/")
            page.fill("#id_username", "boss")
            page.fill("#id_password", "pw-long-enough-1")
            page.click("input[type=submit]")

            # The dashboard charts this hour's failed attempt and the endpoint's latency.
            expect(page.locator("#chart-attempts-hour .hub-bar-failed")).to_have_count(1)
            expect(page.locator("#chart-attempts-hour figcaption")).to_contain_text("0 succeeded, 1 failed")
            expect(page.locator("#chart-pushed-hour figcaption")).to_contain_text("1 pushed")
            expect(page.locator("#hub-latency tbody th")).to_have_text(["erp"])

            # The dashboard counts the failure and links to the failed deliveries.
            failed_count = page.locator("#count-failed")
            expect(failed_count.locator("strong")).to_have_text("1")
            failed_count.click()
            expect(page).to_have_url(f"{live_server.url}/admin/routing/delivery/?state__exact=failed")
            page.click(f"#result_list a[href^='/admin/routing/delivery/{delivery.pk}/change/']")
            expect(page.locator(".hub-badge.hub-failed").first).to_have_text("Failed")

            # The endpoint is fixed; one click and the page follows the delivery until it lands.
            imported = {"level": "info", "subject": "Order R777 imported", "description": "as sales order SO-1042"}
            subscriber.program("/erp", Reply.ok(notifications=[imported]))
            page.click("button[value=retry_now]")
            expect(page.locator(".messagelist")).to_contain_text(f"Delivery {delivery.pk} will be retried now.")
            expect(page.locator("div.readonly .hub-badge")).to_have_text("Delivered")

            # The event's page tells the whole story: two attempts, 500 then 200.
            page.click(f"a[href='/admin/events/event/{event.pk}/change/']")
            expect(page.locator(f"#delivery-{delivery.pk} .hub-badge").first).to_have_text("Delivered")
            expect(page.locator(f"#delivery-{delivery.pk} tr.attempt")).to_have_count(2)
            expect(page.locator("#notifications")).to_contain_text("Order R777 imported")
            screenshot = tmp_path / "admin-event.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert screenshot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempt_count) == ("delivered", 2)
    assert [r.method for r in subscriber.received("/erp")] == ["POST", "POST"]
    event.refresh_from_db()
    assert event.status == "delivered"
