"""The token a subscription sends as X-Hub-Token: the hub makes one, but an endpoint that already
has its key (an endpoint_base app's `endpoint_key`) gets that one set instead."""

from __future__ import annotations

import re

from django.db import transaction

from routing.models import Subscription

TOKEN_MAX_CHARS = 500
# Printable ASCII without spaces: what a header carries unchanged, so the endpoint compares
# exactly the characters the admin typed.
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")


def token_validate(token: object) -> str:
    """The token as given, or ValueError with a sentence."""
    if not isinstance(token, str) or not token:
        raise ValueError("The token must be a non-empty string.")
    if len(token) > TOKEN_MAX_CHARS:
        raise ValueError(f"The token is {len(token)} characters; at most {TOKEN_MAX_CHARS}.")
    if not _TOKEN_RE.match(token):
        raise ValueError("The token must be printable ASCII without spaces (what an HTTP header carries as is).")
    return token


def subscription_token_set(*, subscription_id: int, token: str) -> bool:
    """Make `token` the one the subscription sends from its next delivery on; False when it
    already was. Raises ValueError for a token no header can carry."""
    token_validate(token)
    with transaction.atomic():
        subscription = Subscription.objects.select_for_update(of=("self",)).get(pk=subscription_id)
        if subscription.token == token:
            return False
        subscription.token = token
        subscription.save(update_fields=["token", "updated_at"])
    return True
