"""Who gets an event: the enabled subscriptions (remembered per process for a moment) and the
ones among them that want a given event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist

from events.models import Event
from infra.ttl import TtlCache
from routing import matching
from routing.fields import encrypted_fields
from routing.models import Subscription

_enabled: TtlCache[None, tuple[Subscription, ...]] = TtlCache()

# Said on the message types wherever the schedule is known with them (hubapply's file): no type
# matches no pushed event, and with no schedule there is no tick either.
RECEIVES_NOTHING = (
    "A subscription with no message types and no schedule receives nothing: give it message types "
    '(e.g. ["order:*"]) or a schedule.'
)


def receives_nothing(*, message_types: Sequence[Any] | None, has_schedule: bool) -> bool:
    """No pushed event matches an empty list of message types, and only a schedule makes ticks."""
    return not message_types and not has_schedule


def subscription_has_schedule(subscription: Subscription) -> bool:
    """Whether it pulls: read with select_related("schedule") to spare a query per subscription."""
    try:
        return subscription.schedule is not None
    except ObjectDoesNotExist:
        return False


def subscription_receives(subscription: Subscription, *, separator: str = ", ") -> str:
    """What it receives in words, for lists: an empty cell would read as "everything". The API
    creates a subscription before its schedule, so one that receives nothing (yet) is said so
    here rather than refused there."""
    if subscription.message_types:
        return separator.join(str(t) for t in subscription.message_types)
    if subscription_has_schedule(subscription):
        return "none (its schedule's ticks only)"
    return "nothing (no message types, no schedule)"


def subscriptions_enabled() -> list[Subscription]:
    """The enabled subscriptions for routing, without the encrypted fields routing never reads:
    read, they would be decrypted on every read of the list and kept in clear in memory."""
    return list(Subscription.objects.filter(is_enabled=True).defer(*encrypted_fields(Subscription)).order_by("id"))


def subscriptions_enabled_for_routing() -> list[Subscription]:
    """The enabled subscriptions, read at most once per HUB_SUBSCRIPTIONS_CACHE_SECONDS per
    process: a push would otherwise spend a round trip on them.

    A subscription saved or deleted through the model is seen at once by this process
    (routing.apps forgets the list); any other change within the lifetime. That staleness is what
    a push racing the change had anyway: a delivery for a subscription disabled meanwhile waits
    like any delivery of a disabled one, and one for a subscription deleted meanwhile fails the
    write and is routed again (routing.outbox). The objects are shared: routing only reads them."""
    ttl = settings.HUB_SUBSCRIPTIONS_CACHE_SECONDS
    if ttl <= 0:
        return subscriptions_enabled()
    subscriptions = _enabled.get(None)
    if subscriptions is None:
        subscriptions = tuple(subscriptions_enabled())
        _enabled.put(None, subscriptions, ttl)
    return list(subscriptions)


def subscriptions_cache_clear() -> None:
    """Forget the enabled subscriptions: the next push reads them again."""
    _enabled.clear()


def subscriptions_for_event(*, event: Event, subscriptions: list[Subscription]) -> list[Subscription]:
    """The subscriptions of `subscriptions` that want this event."""
    wanted = []
    for sub in subscriptions:
        if sub.store_id is not None and sub.store_id == event.store_id and not sub.receive_own_events:
            continue
        # Nor is an event an endpoint returned sent back to that endpoint: it would answer it
        # again, and again, down to the depth limit.
        if event.origin == f"subscription:{sub.pk}" and not sub.receive_own_events:
            continue
        if not matching.message_types_match(sub.message_types, event.message):
            continue
        if not matching.filters_match(sub.filters, event.payload, sub.filter_mode):
            continue
        wanted.append(sub)
    return wanted
