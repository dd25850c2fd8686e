"""The management API (/manage/v1): each operation, and who may call it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from events.models import Event, Store
from ops.models import SCOPES, ManagementKey
from routing.admin.subscriptions import SubscriptionForm
from routing.models import Delivery, DeliveryState, Notification, Subscription
from tests.factories import StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

M = "/manage/v1"


def key_make(*scopes: str, name: str = "ops", active: bool = True) -> str:
    key = ManagementKey(name=name, scopes=list(scopes or SCOPES), is_active=active)
    secret = key.key_set_new()
    key.save()
    return secret


@pytest.fixture
def manage_for() -> Callable[..., APIClient]:
    def make(*scopes: str, name: str = "ops") -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key_make(*scopes, name=name)}")
        return client

    return make


@pytest.fixture
def manage(manage_for) -> APIClient:
    """A client holding a key with every scope."""
    return manage_for()


# --- Who may call -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/stores"),
        ("post", "/stores"),
        ("get", "/subscriptions"),
        ("post", "/subscriptions/x/rotate"),
        ("post", "/deliveries/retry"),
    ],
)
def test_no_credentials_is_401_in_the_error_shape(method, path):
    response = getattr(APIClient(), method)(M + path, {}, format="json")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,path", [("get", "/stores"), ("post", "/subscriptions"), ("post", "/deliveries/retry")])
def test_a_store_token_is_403_not_a_management_key(store, client_for, method, path):
    response = getattr(client_for(store), method)(M + path, {"name": "x"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert "store token" in response.json()["detail"]


def test_legacy_store_headers_are_403_too(store):
    client = APIClient()
    response = client.get(M + "/stores", HTTP_X_HUB_STORE=store.name, HTTP_X_HUB_ACCESS_TOKEN=store.token)
    assert response.status_code == 403


def test_a_wrong_or_disabled_key_is_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer hubm_not-a-key")
    assert client.get(M + "/stores").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key_make(name='old', active=False)}")
    response = client.get(M + "/stores")
    assert response.status_code == 401 and "disabled" in response.json()["detail"]
    client.credentials(HTTP_AUTHORIZATION="Bearer hub_neither-store-nor-key")
    assert client.get(M + "/stores").status_code == 401


@pytest.mark.parametrize(
    "scopes,method,path,needed",
    [
        (["stores:write"], "get", "/stores", "stores:read"),
        (["stores:read"], "post", "/stores", "stores:write"),
        (["stores:read"], "post", "/stores/acme/rotate", "stores:write"),
        (["subscriptions:read"], "patch", "/subscriptions/erp", "subscriptions:write"),
        (["stores:read", "stores:write"], "get", "/subscriptions", "subscriptions:read"),
        (["subscriptions:write"], "post", "/deliveries/cancel", "deliveries:write"),
    ],
)
def test_a_key_without_the_scope_is_403_naming_it(manage_for, scopes, method, path, needed):
    response = getattr(manage_for(*scopes), method)(M + path, {}, format="json")
    assert response.status_code == 403
    assert f"'{needed}'" in response.json()["detail"]


def test_the_key_is_stored_only_as_a_hash(manage):
    key = ManagementKey.objects.get()
    assert key.key_hash and len(key.key_hash) == 64
    secret = manage._credentials["HTTP_AUTHORIZATION"].split()[1]
    assert secret.startswith("hubm_") and secret not in (key.key_hash, key.key_hint)
    manage.get(M + "/stores")
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_rate_limited_per_key(manage_for, settings):
    settings.HUB_RATE_LIMITS = {**settings.HUB_RATE_LIMITS, "manage": "2/minute"}
    client = manage_for()
    assert [client.get(M + "/stores").status_code for _ in range(2)] == [200, 200]
    response = client.get(M + "/stores")
    assert response.status_code == 429 and response.json()["error"] == "rate_limited"
    assert int(response["Retry-After"]) >= 1
    # Another key has its own bucket.
    assert manage_for(name="other").get(M + "/stores").status_code == 200


# --- Stores -----------------------------------------------------------------------------------
def test_store_create_shows_the_token_once_and_it_pushes(manage):
    response = manage.post(M + "/stores", {"name": "acme"}, format="json")
    assert response.status_code == 201
    token = response.json()["token"]
    assert token.startswith("hub_") and response.json()["is_active"] is True
    push = APIClient()
    push.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert push.post("/events", {"message": "order:new", "payload": {}}, format="json").status_code == 202
    listing = manage.get(M + "/stores")
    assert token not in listing.content.decode() and token not in manage.get(M + "/stores/acme").content.decode()
    assert [s["name"] for s in listing.json()["results"]] == ["acme"]


def test_store_create_refuses_a_duplicate_or_bad_name_naming_the_field(manage, store):
    response = manage.post(M + "/stores", {"name": store.name}, format="json")
    assert response.status_code == 422 and response.json()["field"] == "name"
    response = manage.post(M + "/stores", {"name": "x" * 101}, format="json")
    assert response.status_code == 422 and response.json()["field"] == "name"
    response = manage.post(M + "/stores", {"name": "ok", "colour": "red"}, format="json")
    assert response.status_code == 422 and response.json()["field"] == "colour"
    assert Store.objects.count() == 1


def test_store_read_change_and_unknown_name(manage, store):
    assert manage.get(M + f"/stores/{store.name}").json()["name"] == store.name
    assert manage.get(M + "/stores/nope").status_code == 404
    response = manage.patch(M + f"/stores/{store.name}", {"name": "renamed"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {**response.json(), "name": "renamed", "changed": True}
    again = manage.patch(M + "/stores/renamed", {"name": "renamed"}, format="json")
    assert again.json()["changed"] is False


def test_store_disable_refuses_its_pushes_and_enable_takes_them_again(manage, store, api):
    response = manage.post(M + f"/stores/{store.name}/disable")
    assert response.status_code == 200 and response.json()["changed"] is True
    assert manage.post(M + f"/stores/{store.name}/disable").json()["changed"] is False
    assert api.post("/events", {"message": "order:new", "payload": {}}, format="json").status_code == 403
    assert manage.post(M + f"/stores/{store.name}/enable").json()["is_active"] is True
    assert api.post("/events", {"message": "order:new", "payload": {}}, format="json").status_code == 202


def test_store_rotate_gives_a_new_token_and_the_grace_is_honoured(manage, store, client_for):
    response = manage.post(M + f"/stores/{store.name}/rotate", {"grace_seconds": 0}, format="json")
    assert response.status_code == 200
    new = response.json()["token"]
    assert new != store.token
    old_client = client_for(store)
    assert old_client.get("/events").status_code == 401
    store.token = new
    assert client_for(store).get("/events").status_code == 200
    bad = manage.post(M + f"/stores/{store.name}/rotate", {"grace_seconds": -1}, format="json")
    assert bad.status_code == 422 and bad.json()["field"] == "grace_seconds"


# --- Subscriptions ----------------------------------------------------------------------------
ERP = {"name": "erp", "url": "https://erp.example.com/hub", "message_types": ["order:*"]}


def test_subscription_create_shows_the_secrets_once_never_in_reads(manage, store):
    body = {**ERP, "store": store.name, "parameters": [{"name": "api_key", "value": "s3cret-param"}]}
    response = manage.post(M + "/subscriptions", body, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["signing_secret"].startswith("whsec_") and created["token"]
    assert created["store"] == store.name and created["parameter_names"] == ["api_key"]
    sub = Subscription.objects.get(name="erp")
    assert sub.signing_secret == created["signing_secret"] and sub.token == created["token"]
    for path in ("/subscriptions", "/subscriptions/erp"):
        text = manage.get(M + path).content.decode()
        assert created["signing_secret"] not in text and created["token"] not in text and "s3cret-param" not in text
    assert "signing_secret" not in manage.get(M + "/subscriptions/erp").json()


# The API refuses what the admin's form refuses, on the same field.
BAD_SUBSCRIPTIONS = [
    ({"url": "http://169.254.169.254/latest/meta-data"}, "url"),
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "https://user:pw@example.com/x"}, "url"),
    ({"message_types": "order:new"}, "message_types"),
    ({"message_types": ["not a message"]}, "message_types"),
    ({"filters": [{"path": "order.x", "op": "nope", "value": 1}]}, "filters"),
    ({"parameters": [{"name": "a"}]}, "parameters"),
    ({"retry_schedule": [5, -1]}, "retry_schedule"),
    ({"timeout_seconds": 500}, "timeout_seconds"),
]


@pytest.mark.parametrize("change,field", BAD_SUBSCRIPTIONS)
def test_subscription_create_refuses_what_the_admin_form_refuses(manage, change, field):
    body = {**ERP, **change}
    response = manage.post(M + "/subscriptions", body, format="json")
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field and response.json()["error"] == "invalid_field"
    assert not Subscription.objects.exists()
    form_data = {
        "name": "erp",
        "url": body["url"],
        "message_types": body["message_types"],
        "filters": body.get("filters", []),
        "filter_mode": "all",
        "parameters": body.get("parameters", []),
        "timeout_seconds": body.get("timeout_seconds", 10),
        "retry_schedule": body.get("retry_schedule"),
        "retry_enabled": True,
        "is_enabled": True,
    }
    form = SubscriptionForm(data={k: v if isinstance(v, str | int | float) else _json(v) for k, v in form_data.items()})
    assert not form.is_valid() and field in form.errors


def _json(value):
    import json

    return json.dumps(value)


def test_subscription_create_refuses_an_unknown_store_or_field(manage):
    response = manage.post(M + "/subscriptions", {**ERP, "store": "ghost"}, format="json")
    assert response.status_code == 422 and response.json()["field"] == "store"
    response = manage.post(M + "/subscriptions", {**ERP, "mesage_types": ["*"]}, format="json")
    assert response.status_code == 422 and response.json()["field"] == "mesage_types"
    response = manage.post(M + "/subscriptions", ["not", "an", "object"], format="json")
    assert response.status_code == 422


def test_subscription_change_validates_the_whole_and_keeps_secrets(manage):
    sub = SubscriptionFactory(name="erp", url="https://erp.example.com/a")
    secret = sub.signing_secret
    response = manage.patch(M + "/subscriptions/erp", {"url": "https://erp.example.com/b"}, format="json")
    assert response.status_code == 200 and response.json()["changed"] is True
    sub.refresh_from_db()
    assert sub.url == "https://erp.example.com/b" and sub.signing_secret == secret
    bad = manage.patch(M + "/subscriptions/erp", {"message_types": "order:new"}, format="json")
    assert bad.status_code == 422 and bad.json()["field"] == "message_types"
    assert manage.patch(M + "/subscriptions/nope", {}, format="json").status_code == 404


def test_subscription_disable_and_enable_go_through_the_admins_services(manage):
    SubscriptionFactory(name="erp")
    response = manage.post(M + "/subscriptions/erp/disable")
    assert response.json()["is_enabled"] is False and response.json()["changed"] is True
    assert "key:ops" in response.json()["disabled_reason"]
    # The admin sees why, as when it disables one itself.
    assert Notification.objects.filter(subscription__name="erp", subject="Subscription disabled").exists()
    assert manage.post(M + "/subscriptions/erp/disable").json()["changed"] is False
    enabled = manage.post(M + "/subscriptions/erp/enable").json()
    assert enabled["is_enabled"] is True and enabled["disabled_reason"] == ""


def test_subscription_rotate_returns_the_new_secret_once(manage):
    sub = SubscriptionFactory(name="erp")
    old = sub.signing_secret
    response = manage.post(M + "/subscriptions/erp/rotate")
    assert response.status_code == 200
    new = response.json()["signing_secret"]
    sub.refresh_from_db()
    assert new != old and sub.signing_secret == new and sub.previous_signing_secret == old
    assert new not in manage.get(M + "/subscriptions/erp").content.decode()


def test_subscription_test_sends_a_test_delivery(manage):
    SubscriptionFactory(name="erp")
    response = manage.post(M + "/subscriptions/erp/test")
    assert response.status_code == 202
    delivery = Delivery.objects.get(pk=response.json()["delivery_id"])
    assert delivery.subscription.name == "erp" and delivery.event.message == "hub:test"


# --- Deliveries by filter -----------------------------------------------------------------------
@pytest.fixture
def failures():
    store = StoreFactory()
    erp, crm = SubscriptionFactory(name="erp"), SubscriptionFactory(name="crm")
    now = timezone.now()

    def delivery(sub, message, state=DeliveryState.FAILED, hours_old=0):
        event = Event.objects.create(store=store, message=message, message_id=f"m{Event.objects.count()}", payload={})
        return Delivery.objects.create(
            event=event, subscription=sub, state=state, created_at=now - timedelta(hours=hours_old)
        )

    return {
        "erp_old": delivery(erp, "order:new", hours_old=48),
        "erp_1": delivery(erp, "order:new", hours_old=2),
        "erp_2": delivery(erp, "shipment:confirm", hours_old=1),
        "crm": delivery(crm, "order:new", hours_old=1),
        "erp_delivered": delivery(erp, "order:new", state=DeliveryState.DELIVERED, hours_old=1),
        "erp_pending": delivery(erp, "order:new", state=DeliveryState.PENDING, hours_old=1),
    }


def _window() -> dict[str, str]:
    now = timezone.now()
    return {"since": (now - timedelta(hours=24)).isoformat(), "until": now.isoformat()}


def test_retry_dry_run_counts_what_failed_for_one_endpoint_in_a_window_and_changes_nothing(manage, failures):
    before = list(Delivery.objects.order_by("id").values_list("id", "state", "updated_at"))
    body = {"subscription": "erp", **_window(), "dry_run": True}
    response = manage.post(M + "/deliveries/retry", body, format="json")
    assert response.status_code == 200
    assert response.json() == {"dry_run": True, "matched": 2, "selected": 2, "remaining": 0}
    assert list(Delivery.objects.order_by("id").values_list("id", "state", "updated_at")) == before


def test_retry_makes_the_selected_failures_due_and_is_safe_twice(manage, failures):
    body = {"subscription": "erp", **_window()}
    response = manage.post(M + "/deliveries/retry", body, format="json").json()
    assert response == {"dry_run": False, "matched": 2, "selected": 2, "changed": 2, "skipped": 0, "remaining": 0}
    states = dict(Delivery.objects.values_list("id", "state"))
    assert states[failures["erp_1"].pk] == states[failures["erp_2"].pk] == DeliveryState.RETRYING
    assert states[failures["erp_old"].pk] == states[failures["crm"].pk] == DeliveryState.FAILED
    # They are no longer failed: a second call selects nothing.
    assert manage.post(M + "/deliveries/retry", body, format="json").json()["matched"] == 0


def test_cancel_by_message_with_a_limit_reports_the_remaining(manage, failures):
    body = {"message": "order:*", "state": ["failed", "pending"], "limit": 2}
    first = manage.post(M + "/deliveries/cancel", body, format="json").json()
    assert (first["matched"], first["selected"], first["changed"], first["remaining"]) == (4, 2, 2, 2)
    second = manage.post(M + "/deliveries/cancel", body, format="json").json()
    assert (second["matched"], second["changed"], second["remaining"]) == (2, 2, 0)
    cancelled = set(Delivery.objects.filter(state=DeliveryState.CANCELLED).values_list("id", flat=True))
    assert cancelled == {failures[n].pk for n in ("erp_old", "erp_1", "crm", "erp_pending")}


def test_replay_makes_one_new_delivery_each_even_when_asked_twice(manage, failures):
    body = {"subscription": "crm"}
    assert manage.post(M + "/deliveries/replay", body, format="json").json()["changed"] == 1
    # The one replayed has its replay on the way: asking again selects nothing and sends nothing.
    assert manage.post(M + "/deliveries/replay", body, format="json").json()["matched"] == 0
    replays = Delivery.objects.filter(replay_of=failures["crm"])
    assert replays.count() == 1 and replays.get().state == DeliveryState.PENDING


def test_replay_with_a_limit_moves_on_to_the_rest(manage, failures):
    body = {"subscription": "erp", "limit": 2}
    first = manage.post(M + "/deliveries/replay", body, format="json").json()
    assert (first["matched"], first["changed"], first["remaining"]) == (3, 2, 1)
    second = manage.post(M + "/deliveries/replay", body, format="json").json()
    assert (second["matched"], second["changed"], second["remaining"]) == (1, 1, 0)
    originals = [failures[n].pk for n in ("erp_old", "erp_1", "erp_2")]
    assert sorted(Delivery.objects.filter(replay_of__isnull=False).values_list("replay_of_id", flat=True)) == originals


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "filter"),
        ({"subscription": "ghost"}, "subscription"),
        ({"state": "delivered"}, "state"),
        ({"state": "nonsense"}, "state"),
        ({"since": "yesterday"}, "since"),
        ({"message": "not a message"}, "message"),
        ({"subscription": "erp", "limit": 10_001}, "limit"),
    ],
)
def test_delivery_filters_that_make_no_sense_are_422_naming_the_field(manage, failures, body, field):
    response = manage.post(M + "/deliveries/retry", body, format="json")
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field


def test_a_non_json_body_is_415(manage):
    response = manage.post(M + "/stores", "name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def test_every_write_is_logged_with_who_and_what(manage, caplog):
    with caplog.at_level(logging.INFO, logger="ops.manage"):
        manage.post(M + "/stores", {"name": "acme"}, format="json")
        manage.post(M + "/stores/acme/disable")
    records = [r for r in caplog.records if r.name == "ops.manage"]
    assert [(r.actor, r.action, r.target) for r in records] == [
        ("key:ops", "store.create", "acme"),
        ("key:ops", "store.update", "acme"),
    ]
    assert all("hub_" not in r.getMessage() for r in records)
