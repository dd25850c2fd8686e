"""manage.py reencryptsecrets: after putting a new key first in HUB_ENCRYPTION_KEYS, rewrite every
stored signing secret and endpoint token under it, so that the old key can be dropped."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from routing.operations import subscription_secrets_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt subscription signing secrets, tokens and parameters with the first HUB_ENCRYPTION_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        count = subscription_secrets_reencrypt()
        self.stdout.write(f"Re-encrypted the signing secrets of {count} subscription(s) with the newest key.")
