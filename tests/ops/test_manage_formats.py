"""The management API sets a subscription's payload format, paths, transform and token, with the
admin form's checks; the token is never shown back."""

from __future__ import annotations

import pytest

from routing.models import Subscription
from tests.factories import SubscriptionFactory
from tests.ops.test_manage_api import M, manage, manage_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

ERP = {"name": "erp", "url": "https://erp.example.com/hub", "message_types": ["order:*"]}


def test_create_and_change_the_format_paths_and_transform(manage):  # noqa: F811
    body = {**ERP, "payload_format": "flat", "paths": {"order:new": "/add_order"}}
    response = manage.post(M + "/subscriptions", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["payload_format"] == "flat"
    assert response.json()["paths"] == {"order:new": "/add_order"}
    change = {"payload_format": "transform", "transform": '{"id": payload.order.number}'}
    response = manage.patch(M + "/subscriptions/erp", change, format="json")
    assert response.status_code == 200, response.content
    sub = Subscription.objects.get(name="erp")
    assert (sub.payload_format, sub.transform) == ("transform", '{"id": payload.order.number}')
    assert manage.get(M + "/subscriptions/erp").json()["transform"] == '{"id": payload.order.number}'


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"payload_format": "transform"}, "transform", "needs a JSONata expression"),
        ({"payload_format": "transform", "transform": "payload.("}, "transform", "at character"),
        ({"paths": {"order:new": "https://evil.example/x"}}, "paths", "path under"),
        ({"payload_format": "xml"}, "payload_format", ""),
    ],
)
def test_what_the_admin_form_refuses_is_422_on_the_field(manage, change, field, says):  # noqa: F811
    response = manage.post(M + "/subscriptions", {**ERP, **change}, format="json")
    assert response.status_code == 422, response.content
    assert response.json()["field"] == field
    assert says in response.json()["detail"]


def test_set_the_token_never_shown_back(manage, caplog):  # noqa: F811
    sub = SubscriptionFactory(name="erp", url="https://erp.example.com/hub")
    response = manage.post(M + "/subscriptions/erp/token", {"token": "endpoint-key-123"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["changed"] is True
    assert "endpoint-key-123" not in response.content.decode()
    sub.refresh_from_db()
    assert sub.token == "endpoint-key-123"
    again = manage.post(M + "/subscriptions/erp/token", {"token": "endpoint-key-123"}, format="json")
    assert again.json()["changed"] is False
    bad = manage.post(M + "/subscriptions/erp/token", {"token": "has space"}, format="json")
    assert bad.status_code == 422 and bad.json()["field"] == "token"
    assert "endpoint-key-123" not in manage.get(M + "/subscriptions/erp").content.decode()
    assert "endpoint-key-123" not in caplog.text


def test_setting_the_token_needs_the_write_scope(manage_for):  # noqa: F811
    SubscriptionFactory(name="erp", url="https://erp.example.com/hub")
    reader = manage_for("subscriptions:read")
    response = reader.post(M + "/subscriptions/erp/token", {"token": "k"}, format="json")
    assert response.status_code == 403


def test_hubsubscription_token_reads_the_key_from_standard_input():
    import io

    from django.core.management import CommandError, call_command

    sub = SubscriptionFactory(name="erp", url="https://erp.example.com/hub")
    out = io.StringIO()
    call_command("hubsubscription", "token", "erp", stdin=io.StringIO("endpoint-key-123\n"), stdout=out)
    assert "Token of 'erp' set." in out.getvalue() and "endpoint-key-123" not in out.getvalue()
    sub.refresh_from_db()
    assert sub.token == "endpoint-key-123"
    with pytest.raises(CommandError, match="printable ASCII"):
        call_command("hubsubscription", "token", "erp", stdin=io.StringIO("two words\n"), stdout=io.StringIO())
