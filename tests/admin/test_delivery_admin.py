"""The deliveries list and its actions (retry now, cancel, replay), each safe to click twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from routing.models import Delivery
from tests.factories import DeliveryFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/routing/delivery/"


def listed_ids(response) -> set[int]:
    return {d.pk for d in response.context["cl"].result_list}


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_list_filters_by_state_subscription_and_last_change(admin_client):
    erp, crm = SubscriptionFactory(), SubscriptionFactory()
    failed_now = DeliveryFactory(subscription=erp, state="failed")
    failed_yesterday = DeliveryFactory(subscription=crm, state="failed")
    Delivery.objects.filter(pk=failed_yesterday.pk).update(updated_at=timezone.now() - timedelta(hours=20))
    retrying = DeliveryFactory(subscription=erp, state="retrying")

    assert listed_ids(admin_client.get(LIST, {"state__exact": "failed"})) == {failed_now.pk, failed_yesterday.pk}
    assert listed_ids(admin_client.get(LIST, {"subscription__id__exact": erp.pk})) == {failed_now.pk, retrying.pk}
    assert listed_ids(admin_client.get(LIST, {"state__exact": "failed", "changed": "hour"})) == {failed_now.pk}
    assert listed_ids(admin_client.get(LIST, {"state__exact": "failed", "changed": "day"})) == {
        failed_now.pk,
        failed_yesterday.pk,
    }


def test_list_shows_state_badges_and_searches_by_order_number(admin_client, make_orders):
    first, _ = make_orders(2)
    page = admin_client.get(LIST, {"q": first.payload["order"]["number"]})
    assert listed_ids(page) == set(first.deliveries.values_list("id", flat=True))
    assert '<span class="hub-badge hub-failed">Failed</span>' in page.content.decode()


def test_detail_shows_attempts_and_buttons(admin_client, failed_delivery):
    page = admin_client.get(f"{LIST}{failed_delivery.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert '<span class="hub-badge hub-failed">Failed</span>' in text
    assert "{&quot;error&quot;: &quot;boom&quot;}" in text
    for action in ("retry-now", "cancel", "replay"):
        assert f'action="{LIST}{failed_delivery.pk}/{action}/"' in text
    # A failed delivery is final: its page does not reload itself.
    assert 'http-equiv="refresh"' not in text


def test_retry_now_twice_retries_once_and_says_why_the_second_time(admin_client, failed_delivery):
    back = f"/admin/events/event/{failed_delivery.event_id}/change/"
    first = admin_client.post(f"{LIST}{failed_delivery.pk}/retry-now/", {"next": back}, follow=True)
    assert first.redirect_chain[0][0] == back
    assert messages_of(first) == [f"Delivery {failed_delivery.pk} will be retried now."]
    failed_delivery.refresh_from_db()
    assert failed_delivery.state == "retrying"
    assert failed_delivery.next_attempt_at <= timezone.now()
    assert failed_delivery.event.__class__.objects.get(pk=failed_delivery.event_id).status == "delivering"

    # Still waiting for the worker: clicking again only makes it due now again.
    again = admin_client.post(f"{LIST}{failed_delivery.pk}/retry-now/", follow=True)
    assert messages_of(again) == [f"Delivery {failed_delivery.pk} will be retried now."]
    assert Delivery.objects.filter(event=failed_delivery.event).count() == 1

    # Who retried it, and when, is in its history.
    history = admin_client.get(f"{LIST}{failed_delivery.pk}/history/").content.decode()
    assert history.count(f"Delivery {failed_delivery.pk} will be retried now.") == 2

    Delivery.objects.filter(pk=failed_delivery.pk).update(state="delivered")
    done = admin_client.post(f"{LIST}{failed_delivery.pk}/retry-now/", follow=True)
    assert messages_of(done) == [f"Delivery {failed_delivery.pk} was not retried: it is delivered."]


def test_retry_now_refuses_while_the_subscription_is_disabled(admin_client, failed_delivery):
    failed_delivery.subscription.__class__.objects.filter(pk=failed_delivery.subscription_id).update(is_enabled=False)
    response = admin_client.post(f"{LIST}{failed_delivery.pk}/retry-now/", follow=True)
    assert "its subscription is disabled" in messages_of(response)[0]
    assert Delivery.objects.get(pk=failed_delivery.pk).state == "failed"


def test_cancel_twice(admin_client, failed_delivery):
    first = admin_client.post(f"{LIST}{failed_delivery.pk}/cancel/", follow=True)
    assert messages_of(first) == [f"Delivery {failed_delivery.pk} cancelled."]
    second = admin_client.post(f"{LIST}{failed_delivery.pk}/cancel/", follow=True)
    assert messages_of(second) == [f"Delivery {failed_delivery.pk} was not cancelled: it is cancelled."]
    assert Delivery.objects.get(pk=failed_delivery.pk).state == "cancelled"


def test_replay_twice_makes_one_new_delivery(admin_client, failed_delivery):
    admin_client.post(f"{LIST}{failed_delivery.pk}/replay/")
    admin_client.post(f"{LIST}{failed_delivery.pk}/replay/")
    [replay] = Delivery.objects.filter(replay_of=failed_delivery)
    assert (replay.event_id, replay.subscription_id, replay.state) == (
        failed_delivery.event_id,
        failed_delivery.subscription_id,
        "pending",
    )
    page = admin_client.get(f"{LIST}{replay.pk}/change/").content.decode()
    assert f'<a href="{LIST}{failed_delivery.pk}/change/">delivery {failed_delivery.pk}</a>' in page
    # On its way: the page reloads itself until there is a result.
    assert 'http-equiv="refresh"' in page


def test_bulk_actions_on_the_list(admin_client):
    failed = DeliveryFactory.create_batch(2, state="failed")
    delivered = DeliveryFactory(state="delivered")
    ids = [d.pk for d in [*failed, delivered]]
    response = admin_client.post(LIST, {"action": "retry_now_selected", "_selected_action": ids}, follow=True)
    assert sorted(Delivery.objects.filter(pk__in=ids).values_list("state", flat=True)) == [
        "delivered",
        "retrying",
        "retrying",
    ]
    assert f"Delivery {delivered.pk} was not retried: it is delivered." in messages_of(response)

    admin_client.post(LIST, {"action": "cancel_selected", "_selected_action": ids})
    assert Delivery.objects.filter(pk__in=ids, state="cancelled").count() == 2

    admin_client.post(LIST, {"action": "replay_selected", "_selected_action": [delivered.pk]})
    admin_client.post(LIST, {"action": "replay_selected", "_selected_action": [delivered.pk]})
    assert Delivery.objects.filter(replay_of=delivered).count() == 1


def test_actions_need_post_and_the_change_permission(failed_delivery):
    viewer = User.objects.create_user("viewer", password="pw-long-enough-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    client = Client()
    client.force_login(viewer)
    assert client.get(f"{LIST}{failed_delivery.pk}/change/").status_code == 200
    assert client.post(f"{LIST}{failed_delivery.pk}/retry-now/").status_code == 403
    actions = [
        name for name, _ in client.get(LIST).context["cl"].model_admin.get_action_choices(client.get(LIST).wsgi_request)
    ]
    assert "retry_now_selected" not in actions
    assert Delivery.objects.get(pk=failed_delivery.pk).state == "failed"


def test_action_urls_refuse_get(admin_client, failed_delivery):
    assert admin_client.get(f"{LIST}{failed_delivery.pk}/retry-now/").status_code == 405
    assert Delivery.objects.get(pk=failed_delivery.pk).state == "failed"


def test_next_pointing_elsewhere_is_ignored(admin_client, failed_delivery):
    response = admin_client.post(f"{LIST}{failed_delivery.pk}/cancel/", {"next": "https://evil.example/"})
    assert response["Location"] == f"{LIST}{failed_delivery.pk}/change/"


def test_a_delivery_page_is_titled_by_its_event_and_endpoint_and_shows_no_next_attempt_once_done(admin_client):
    erp = SubscriptionFactory(name="erp")
    done = DeliveryFactory(subscription=erp, state="delivered", event__message="order:new", event__message_id="m-7")
    waiting = DeliveryFactory(subscription=erp, state="retrying")

    page = admin_client.get(f"{LIST}{done.pk}/change/")
    assert str(page.context["original"]) == "order:new m-7 to erp"
    assert "order:new m-7 to erp" in page.content.decode()
    listed = admin_client.get(LIST).context["cl"]
    next_attempt = listed.model_admin.next_attempt
    assert next_attempt(done) is None
    assert next_attempt(waiting) == waiting.next_attempt_at


def test_the_admin_has_no_view_site_link(admin_client):
    assert "View site" not in admin_client.get("/admin/").content.decode()
