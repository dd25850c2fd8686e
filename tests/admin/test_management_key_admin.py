import re

import pytest
from rest_framework.test import APIClient

from ops.models import ManagementKey

pytestmark = pytest.mark.django_db


def test_a_key_made_in_the_admin_is_shown_once_and_works(admin_client):
    response = admin_client.post(
        "/admin/ops/managementkey/add/", {"name": "ci", "scopes": ["stores:read"], "is_active": "on"}
    )
    assert response.status_code == 200
    key = re.search(r'id="key">(hubm_[^<]+)<', response.content.decode()).group(1)
    stored = ManagementKey.objects.get(name="ci")
    assert stored.scopes == ["stores:read"] and key not in (stored.key_hash, stored.key_hint)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/manage/v1/stores").status_code == 200
    listing = admin_client.get("/admin/ops/managementkey/").content.decode()
    assert stored.key_hint in listing and key not in listing
    assert key not in admin_client.get(f"/admin/ops/managementkey/{stored.pk}/change/").content.decode()
