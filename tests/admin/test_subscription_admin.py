"""The subscription form, its secrets (masked; in clear only right after they are made) and its actions."""

from __future__ import annotations

import pytest
from django.test import override_settings

from routing.models import Delivery, Notification, Schedule, Subscription
from tests.factories import SubscriptionFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/routing/subscription/"

VALID = {
    "name": "erp",
    "url": "https://erp.example.com/hub",
    "message_types": '["order:new", "shipment:*"]',
    "filters": '[{"path": "order.channel", "op": "eq", "value": "spree"}]',
    "filter_mode": "all",
    "parameters": '[{"name": "api_key", "value": "k1"}]',
    "http_method": "",
    "timeout_seconds": "10",
    "retry_enabled": "on",
    "retry_schedule": "null",
    "is_enabled": "on",
    "disabled_reason": "",
}


def form_errors(response) -> dict[str, list[str]]:
    return {field: list(errors) for field, errors in response.context["adminform"].form.errors.items()}


def test_create_shows_the_signing_secret_once(admin_client):
    form = admin_client.get(f"{LIST}add/").context["adminform"].form
    assert "signing_secret" not in form.fields and "token" not in form.fields
    response = admin_client.post(f"{LIST}add/", VALID)
    assert response.status_code == 200
    subscription = Subscription.objects.get(name="erp")
    assert subscription.message_types == ["order:new", "shipment:*"]
    assert subscription.parameters == [{"name": "api_key", "value": "k1"}]
    assert subscription.signing_secret in response.content.decode()
    # The admin marks every page no-store: the secret stays out of caches.
    assert "no-store" in response["Cache-Control"]
    # From then on, only masked.
    for url in (LIST, f"{LIST}{subscription.pk}/change/"):
        text = admin_client.get(url).content.decode()
        assert subscription.signing_secret not in text
        assert subscription.token not in text
        assert "whsec_••••••••" + subscription.signing_secret[-4:] in text


@pytest.mark.parametrize("types", ["", "[]"])
def test_a_subscription_that_only_pulls_is_saved_without_message_types_and_listed_so(admin_client, types):
    response = admin_client.post(f"{LIST}add/", {**VALID, "message_types": types})
    # Saved: the page that shows the new secret once, not the form again.
    assert response.status_code == 200 and "adminform" not in response.context
    pull = Subscription.objects.get(name="erp")
    assert pull.message_types == []
    # Its schedule is made after it, on its own page: not refused, but said, with the way to one.
    [said] = [str(m) for m in response.context["messages"] if "receives nothing" in str(m)]
    assert said.startswith("“erp” receives nothing until it has message types or a schedule")
    assert f'href="/admin/routing/schedule/add/?subscription={pull.pk}"' in said
    listed = admin_client.get(LIST).content.decode()
    assert '<td class="field-types">nothing (no message types, no schedule)</td>' in listed
    Schedule.objects.create(subscription=pull, interval_seconds=300)
    assert "none (its schedule&#x27;s ticks only)" in admin_client.get(LIST).content.decode()
    # Saved again with its schedule: nothing to warn of.
    response = admin_client.post(f"{LIST}{pull.pk}/change/", {**VALID, "message_types": types}, follow=True)
    assert not [m for m in response.context["messages"] if "receives nothing" in str(m)]


def test_a_subscription_with_message_types_is_saved_with_no_warning(admin_client):
    response = admin_client.post(f"{LIST}add/", VALID)
    assert not [m for m in response.context["messages"] if "receives nothing" in str(m)]
    assert '<td class="field-types">order:new, shipment:*</td>' in admin_client.get(LIST).content.decode()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("message_types", '"order:new"', "Message types must be a list"),
        ("message_types", '["order new"]', "Message type 1 ('order new') is not a message name"),
        ("filters", '[{"path": "a.b", "op": "like", "value": 1}]', "Filter 1 has op 'like'; it must be one of"),
        ("filters", '[{"path": "x", "op": "match", "value": "("}]', "Filter 1 (match) is not a valid regular"),
        ("filters", "{not json", "Enter a valid JSON."),
        ("parameters", '{"api_key": "k1"}', "Parameters must be a list"),
        ("parameters", '[{"value": "k1"}]', "Parameter 1 needs a 'name'"),
        ("parameters", '[{"name": "a", "value": 1}, {"name": "a", "value": 2}]', "Parameter 2 repeats the name 'a'"),
        ("parameters", '[{"name": "a"}]', "Parameter 1 ('a') needs a 'value'"),
        ("retry_schedule", '["soon"]', "Retry 1 of the schedule must be a number of seconds, zero or more."),
        ("timeout_seconds", "500", "The timeout must be more than 0 and at most 120 seconds."),
        ("url", "ftp://erp.example.com/", "Only http and https URLs can receive deliveries, not 'ftp'."),
        ("url", "not a url", "Enter a valid URL."),
    ],
)
def test_form_says_what_is_wrong_in_words(admin_client, field, value, says):
    response = admin_client.post(f"{LIST}add/", {**VALID, field: value})
    assert response.status_code == 200
    errors = form_errors(response)
    assert list(errors) == [field]
    assert says in errors[field][0]
    assert not Subscription.objects.exists()


@override_settings(HUB_ALLOW_PRIVATE_DESTINATIONS=False)
def test_form_refuses_urls_aimed_at_the_hubs_own_network(admin_client):
    for url, says in [
        ("http://127.0.0.1:8000/admin/", "it is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "it is a cloud metadata address"),
        ("http://user:pw@erp.example.com/", "Credentials in the URL are not allowed"),
    ]:
        errors = form_errors(admin_client.post(f"{LIST}add/", {**VALID, "url": url}))
        assert says in errors["url"][0], errors


def test_emptied_filters_and_parameters_mean_none(admin_client):
    admin_client.post(f"{LIST}add/", {**VALID, "filters": "", "parameters": ""})
    subscription = Subscription.objects.get(name="erp")
    assert (subscription.filters, subscription.parameters) == ([], [])


def test_change_form_keeps_the_secrets(admin_client):
    subscription = SubscriptionFactory(name="erp")
    secret, token = subscription.signing_secret, subscription.token
    response = admin_client.post(f"{LIST}{subscription.pk}/change/", {**VALID, "url": "https://new.example.com/"})
    assert response.status_code == 302
    subscription.refresh_from_db()
    assert (subscription.url, subscription.signing_secret, subscription.token) == (
        "https://new.example.com/",
        secret,
        token,
    )


def test_change_page_links_to_its_deliveries(admin_client):
    subscription = SubscriptionFactory()
    text = admin_client.get(f"{LIST}{subscription.pk}/change/").content.decode()
    assert f"/admin/routing/delivery/?subscription__id__exact={subscription.pk}&amp;state__exact=failed" in text
    assert f'action="{LIST}{subscription.pk}/send-test/"' in text
    assert f'href="{LIST}{subscription.pk}/rotate-secret/"' in text


def test_form_shows_json_indented(admin_client):
    subscription = SubscriptionFactory(parameters=[{"name": "api_key", "value": "k1"}])
    text = admin_client.get(f"{LIST}{subscription.pk}/change/").content.decode()
    assert "[\n  {\n    &quot;name&quot;: &quot;api_key&quot;," in text


def test_disable_and_enable(admin_client):
    subscription = SubscriptionFactory(failing_since=None)
    admin_client.post(LIST, {"action": "disable_selected", "_selected_action": [subscription.pk]})
    subscription.refresh_from_db()
    assert not subscription.is_enabled
    assert subscription.disabled_reason == "disabled by admin in the admin"
    assert Notification.objects.filter(subscription=subscription, subject="Subscription disabled").count() == 1
    # Disabling again changes nothing and says so.
    again = admin_client.post(LIST, {"action": "disable_selected", "_selected_action": [subscription.pk]}, follow=True)
    assert "0 subscription(s) disabled." in [str(m) for m in again.context["messages"]]

    admin_client.post(LIST, {"action": "enable_selected", "_selected_action": [subscription.pk]})
    subscription.refresh_from_db()
    assert (subscription.is_enabled, subscription.disabled_reason, subscription.failing_since) == (True, "", None)


def test_list_shows_enabled_at_a_glance(admin_client):
    SubscriptionFactory(name="on")
    SubscriptionFactory(name="off", is_enabled=False, disabled_reason="the endpoint has failed every attempt")
    text = admin_client.get(LIST).content.decode()
    assert '<span class="hub-badge hub-enabled">Enabled</span>' in text
    assert '<span class="hub-badge hub-disabled">Disabled</span>' in text
    assert "the endpoint has failed every attempt" in text


def test_send_test_button_makes_a_test_delivery_and_opens_it(admin_client):
    subscription = SubscriptionFactory()
    response = admin_client.post(f"{LIST}{subscription.pk}/send-test/")
    delivery = Delivery.objects.get(subscription=subscription)
    assert response["Location"] == f"/admin/routing/delivery/{delivery.pk}/change/"
    assert delivery.event.message == "hub:test"
    # Clicking again while it is on its way opens the same delivery.
    assert admin_client.post(f"{LIST}{subscription.pk}/send-test/")["Location"] == response["Location"]
    page = admin_client.get(response["Location"]).content.decode()
    assert 'http-equiv="refresh"' in page
    assert "Pending" in page


def test_send_test_action_on_the_list(admin_client):
    subscriptions = SubscriptionFactory.create_batch(2)
    response = admin_client.post(
        LIST, {"action": "send_test_selected", "_selected_action": [s.pk for s in subscriptions]}, follow=True
    )
    assert Delivery.objects.filter(event__message="hub:test").count() == 2
    assert sum("Test event sent" in str(m) for m in response.context["messages"]) == 2


def test_rotate_secret_asks_first_then_shows_the_new_secret_once(admin_client, settings):
    settings.HUB_SECRET_ROTATION_GRACE_SECONDS = 3600
    subscription = SubscriptionFactory(name="erp")
    old = subscription.signing_secret
    confirm = admin_client.get(f"{LIST}{subscription.pk}/rotate-secret/")
    assert confirm.status_code == 200
    assert Subscription.objects.get(pk=subscription.pk).signing_secret == old

    response = admin_client.post(f"{LIST}{subscription.pk}/rotate-secret/")
    subscription.refresh_from_db()
    new = subscription.signing_secret
    assert new != old and new.startswith("whsec_")
    assert f'<div class="hub-secret" id="secret-{subscription.pk}">{new}</div>' in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    # Afterwards: both masked, the old one with the end of its grace.
    page = admin_client.get(f"{LIST}{subscription.pk}/change/").content.decode()
    assert new not in page and old not in page
    assert "whsec_••••••••" + new[-4:] in page
    assert "whsec_••••••••" + old[-4:] + ", still signed with until" in page
    assert "Rotated the signing secret." in admin_client.get(f"{LIST}{subscription.pk}/history/").content.decode()


def test_rotate_secret_action_on_the_list_shows_each_new_secret(admin_client):
    subscriptions = SubscriptionFactory.create_batch(2)
    olds = {s.pk: s.signing_secret for s in subscriptions}
    response = admin_client.post(
        LIST, {"action": "rotate_secret_selected", "_selected_action": [s.pk for s in subscriptions]}
    )
    text = response.content.decode()
    for subscription in Subscription.objects.filter(pk__in=olds):
        assert subscription.signing_secret != olds[subscription.pk]
        assert f'id="secret-{subscription.pk}">{subscription.signing_secret}</div>' in text


def test_rotate_secret_needs_post_to_change_anything_and_the_change_permission(client, db):
    from django.contrib.auth.models import Permission, User

    subscription = SubscriptionFactory()
    viewer = User.objects.create_user("viewer", password="pw-long-enough-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_subscription"))
    client.force_login(viewer)
    assert client.post(f"{LIST}{subscription.pk}/rotate-secret/").status_code == 403
    assert client.post(f"{LIST}{subscription.pk}/send-test/").status_code == 403
    assert Subscription.objects.get(pk=subscription.pk).signing_secret == subscription.signing_secret
    assert not Delivery.objects.exists()
