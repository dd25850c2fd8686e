"""A subscription's token and "try it" box in a real browser (Debian's chromium, Playwright): an
admin sets the endpoint's key, reveals it (the history records it), and tries a mapping on a
stored event, first one that fails, then one that works."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User

from routing.models import Subscription
from tests.admin.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.factories import EventFactory, SubscriptionFactory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"),
]


def test_set_reveal_and_try_in_the_browser(live_server):
    from playwright.sync_api import expect, sync_playwright

    User.objects.create_superuser("boss", "boss@example.com", "pw-long-enough-1")
    sub = SubscriptionFactory(
        name="erp",
        url="https://erp.example.com/hub",
        payload_format="transform",
        transform='{"id": payload.order.number}',
    )
    event = EventFactory(message="order:new", payload={"order": {"number": "R42", "email": "a@example.com"}})

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{live_server.url}/admin/login/?next=/admin/routing/subscription/{sub.pk}/change/")
            page.fill("#id_username", "boss")
            page.fill("#id_password", "pw-long-enough-1")
            page.click("input[type=submit]")

            # Set the endpoint's own key: afterwards it is masked.
            page.click("#token-manage")
            page.fill("#id_token", "endpoint-key-abc123")
            page.click("#token-set")
            expect(page.locator(".messagelist")).to_contain_text("The endpoint token is set")
            expect(page.locator("#token-masked")).not_to_contain_text("endpoint-key-abc123")
            assert "endpoint-key-abc123" not in page.content()

            # Reveal it on purpose.
            page.click("#token-reveal")
            expect(page.locator("#token-revealed")).to_have_text("endpoint-key-abc123")

            # The subscription's history says who set it and who looked.
            page.goto(f"{live_server.url}/admin/routing/subscription/{sub.pk}/history/")
            expect(page.locator("#change-history")).to_contain_text("Set the endpoint token (X-Hub-Token).")
            expect(page.locator("#change-history")).to_contain_text("Revealed the endpoint token (X-Hub-Token).")

            # Try a mapping that fails, then one that works, on the stored event.
            page.goto(f"{live_server.url}/admin/routing/subscription/{sub.pk}/change/")
            page.click("#try-it")
            page.fill("#id_event", str(event.uid))
            page.fill("#id_transform", "$sum(payload.order.number)")
            page.click("#try-run")
            expect(page.locator("#try-error")).to_contain_text("the transform failed at character")
            expect(page.locator("#try-error")).to_contain_text("T0412")
            page.fill("#id_transform", '{"ref": payload.order.number, "to": payload.order.email}')
            page.click("#try-run")
            expect(page.locator("#try-request")).to_have_text("POST https://erp.example.com/hub")
            body = json.loads(page.locator("#try-body").inner_text())
            assert body == {"ref": "R42", "to": "a@example.com"}
            assert "endpoint-key-abc123" not in page.content()
        finally:
            browser.close()

    sub = Subscription.objects.get(pk=sub.pk)
    assert sub.token == "endpoint-key-abc123"
    # Trying saved nothing.
    assert sub.transform == '{"id": payload.order.number}'
    assert LogEntry.objects.filter(object_id=str(sub.pk)).count() == 2
