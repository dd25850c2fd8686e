"""Old spellings of message names are accepted and stored canonical."""

import pytest

from events.messages import MESSAGE_ALIASES, message_canonical
from events.models import Event

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("order:update", "order:updated"),
        ("order:cancel", "order:canceled"),
        ("order:cancelled", "order:canceled"),
        ("product:update", "product:updated"),
        ("user:update", "user:updated"),
        ("shipment:confirmation", "shipment:confirm"),
        ("Order:New", "order:new"),
        (" order:new ", "order:new"),
        ("stock:change", "stock:change"),
    ],
)
def test_alias_is_stored_under_its_canonical_name(api, sent, stored):
    response = api.post("/events", {"message": sent, "payload": {}}, format="json")
    assert response.status_code == 202
    assert response.json()["message"] == stored
    assert Event.objects.get().message == stored


def test_every_alias_points_at_a_canonical_name():
    for alias, canonical in MESSAGE_ALIASES.items():
        assert message_canonical(alias) == canonical
        assert message_canonical(canonical) == canonical
