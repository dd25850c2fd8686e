"""What the management API, the commands and the declarative file do to stores, subscriptions
and deliveries. Each write goes through the same services as the admin (events.services,
routing.operations, routing.standing) and the same validation as the admin's form
(Subscription.clean: the SSRF guard, message types, filters, parameters, retry schedule), and is
logged as JSON with who did it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.db.models.functions import Coalesce

from events.errors import HubError, NotFound
from events.messages import InvalidMessageName, message_canonical
from events.models import Store
from events.selectors import store_cache_clear
from events.services import store_set_active, store_token_rotate
from routing import endpoint_tokens, operations
from routing.models import (
    DELIVERY_OPEN_STATES,
    DELIVERY_UNFINISHED_STATES,
    SUBSCRIPTION_EDITABLE_FIELDS,
    Delivery,
    DeliveryState,
    Schedule,
    Subscription,
)
from routing.schedules import Tick, schedule_run_now, schedule_save
from routing.standing import subscription_disable

logger = logging.getLogger("ops.manage")

SUBSCRIPTION_FIELDS = SUBSCRIPTION_EDITABLE_FIELDS
STORE_FIELDS = ("name", "is_active")

# Most deliveries one call acts on, and how many when the caller does not say: each is the admin's
# own action in its own transaction (some milliseconds each), so a call stays well inside an HTTP
# timeout by default. What is left is reported as `remaining` for the next call.
DELIVERIES_MAX_PER_CALL = 10_000
DELIVERIES_DEFAULT_PER_CALL = 1_000


class InvalidField(HubError):
    """A value the hub refuses, with the field it belongs to."""

    status_code = 422
    code = "invalid_field"


class Conflict(HubError):
    status_code = 409
    code = "conflict"


@contextmanager
def _unique_or_conflict(kind: str, name: str) -> Iterator[None]:
    """Validation checked the name; a concurrent writer may still take it first."""
    try:
        with transaction.atomic():
            yield
    except IntegrityError:
        raise Conflict(f"A {kind} named '{name}' was written meanwhile; try again.", field="name") from None


def write_logged(actor: str, action: str, target: str, **details: Any) -> None:
    """Every write of the management surface, one JSON line: who, what, on what."""
    logger.info("manage write", extra={"actor": actor, "action": action, "target": target, **details})


def _first_error(exc: ValidationError) -> InvalidField:
    if hasattr(exc, "error_dict"):
        field, errors = next(iter(exc.error_dict.items()))
        return InvalidField(errors[0].messages[0], field=None if field == "__all__" else field)
    return InvalidField(exc.messages[0])


# --- Stores -----------------------------------------------------------------------------------
def store_by_name(name: str) -> Store:
    store = Store.objects.filter(name=name).first()
    if store is None:
        raise NotFound(f"No store named '{name}'.", field="name")
    return store


def store_check(values: Mapping[str, Any], *, instance: Store | None = None) -> Store:
    """The store as it would be with `values`, validated (unsaved)."""
    store = Store.objects.get(pk=instance.pk) if instance is not None else Store()
    for name, value in values.items():
        setattr(store, name, value)
    try:
        store.clean_fields(exclude=["token_hash", "token_hint"])
        store.validate_unique()
    except ValidationError as exc:
        raise _first_error(exc) from None
    return store


def store_create(*, values: Mapping[str, Any], actor: str) -> tuple[Store, str]:
    """A new store and its token in clear (the only time it is seen)."""
    store = store_check(values)
    token = store.token_set_new()
    with _unique_or_conflict("store", store.name):
        store.save()
    write_logged(actor, "store.create", store.name)
    return store, token


def store_update(*, store: Store, values: Mapping[str, Any], actor: str) -> list[str]:
    """Change what `values` names; the fields that changed (none: nothing was written)."""
    store_check(values, instance=store)
    changed = [name for name, value in values.items() if getattr(store, name) != value]
    with transaction.atomic():
        if "is_active" in changed:
            store_set_active(store_id=store.pk, active=values["is_active"])
            store.is_active = values["is_active"]
        if "name" in changed:
            store.name = values["name"]
            with _unique_or_conflict("store", store.name):
                store.save(update_fields=["name"])
    if "name" in changed:
        store_cache_clear()
    if changed:
        write_logged(actor, "store.update", store.name, changed=changed)
    return changed


def store_rotate(*, store: Store, actor: str, grace_seconds: int | None = None) -> str:
    token = store_token_rotate(store=store, grace_seconds=grace_seconds)
    write_logged(actor, "store.rotate", store.name, grace_seconds=grace_seconds)
    return token


# --- Subscriptions ----------------------------------------------------------------------------
def subscription_by_name(name: str) -> Subscription:
    subscription = Subscription.objects.select_related("store").filter(name=name).first()
    if subscription is None:
        raise NotFound(f"No subscription named '{name}'.", field="name")
    return subscription


def subscription_defaults() -> dict[str, Any]:
    """What a subscription is when a field is not given: the model's defaults."""
    fields = {f: Subscription._meta.get_field(f) for f in SUBSCRIPTION_FIELDS if f not in ("name", "url")}
    return {name: (None if name == "store" else field.get_default()) for name, field in fields.items()}


def subscription_check(
    values: Mapping[str, Any],
    *,
    instance: Subscription | None = None,
    store_lookup: Callable[[str], Store | None] | None = None,
) -> Subscription:
    """The subscription as it would be with `values` (store given by name), validated as the
    admin's form validates it (Subscription.clean: URL through the SSRF guard, message types,
    filters, parameters, retry schedule, timeout). Unsaved; raises InvalidField naming the field."""
    values = dict(values)
    if "store" in values:
        name = values["store"]
        found = None if name is None else (store_lookup or _store_or_none)(name)
        if name is not None and found is None:
            raise InvalidField(f"No store named '{name}'.", field="store")
        values["store"] = found
    if instance is not None:
        subscription = Subscription.objects.get(pk=instance.pk) if instance.pk else instance
    else:
        subscription = Subscription()
    for name, value in values.items():
        setattr(subscription, name, value)
    errors: dict[str, list[str]] = {}
    try:
        # message_types and parameters get their sentence from clean(), not Django's "cannot be
        # blank"; store is checked above (it may be one a file is about to create).
        subscription.clean_fields(exclude=["message_types", "parameters", "store"])
    except ValidationError as exc:
        errors.update(exc.message_dict)
    try:
        subscription.clean()
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, messages)
    if not errors:
        try:
            subscription.validate_unique()
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if errors:
        # The first bad field in the order the admin's form shows them.
        field = next((f for f in SUBSCRIPTION_FIELDS if f in errors), next(iter(errors)))
        raise InvalidField(errors[field][0], field=None if field == "__all__" else field)
    return subscription


def _store_or_none(name: str) -> Store | None:
    return Store.objects.filter(name=name).first()


def subscription_create(
    *, values: Mapping[str, Any], actor: str, store_lookup: Callable[[str], Store | None] | None = None
) -> Subscription:
    """A new subscription; its signing secret and token are on the returned instance, in clear,
    for the caller to show once."""
    subscription = subscription_check(values, store_lookup=store_lookup)
    if subscription.parameters is None:
        subscription.parameters = []
    with _unique_or_conflict("subscription", subscription.name):
        subscription.save()
    write_logged(actor, "subscription.create", subscription.name)
    return subscription


def subscription_field_value(subscription: Subscription, field: str) -> Any:
    """A field as the API and files show it (the store by its name)."""
    if field == "store":
        return subscription.store.name if subscription.store_id else None
    return getattr(subscription, field)


def subscription_changes(subscription: Subscription, values: Mapping[str, Any]) -> list[str]:
    """The fields whose value in `values` differs from the subscription's."""
    return [field for field, value in values.items() if subscription_field_value(subscription, field) != value]


def subscription_update(
    *,
    subscription: Subscription,
    values: Mapping[str, Any],
    actor: str,
    store_lookup: Callable[[str], Store | None] | None = None,
) -> list[str]:
    """Change what `values` names, after validating the result as a whole. Turning an endpoint on
    or off goes through the same services as the admin's actions (a disable is noted where the
    admin looks; an enable sends what it missed). Returns the fields that changed."""
    changed = subscription_changes(subscription, values)
    if not changed:
        return []
    checked = subscription_check(values, instance=subscription, store_lookup=store_lookup)
    with transaction.atomic():
        if "is_enabled" in changed:
            if values["is_enabled"]:
                operations.subscription_enable(subscription_id=subscription.pk)
            else:
                reason = values.get("disabled_reason") or f"disabled by {actor}"
                subscription_disable(subscription_id=subscription.pk, reason=reason)
        fresh = Subscription.objects.select_for_update(of=("self",)).select_related("store").get(pk=subscription.pk)
        value = subscription_field_value
        fields = [f for f in values if f != "is_enabled" and value(fresh, f) != value(checked, f)]
        for field in fields:
            setattr(fresh, field, getattr(checked, field))
        if fields:
            with _unique_or_conflict("subscription", fresh.name):
                fresh.save(update_fields=[*fields, "updated_at"])
    for field in (*SUBSCRIPTION_FIELDS, "failing_since", "updated_at"):
        setattr(subscription, field, getattr(fresh, field))
    write_logged(actor, "subscription.update", subscription.name, changed=changed)
    return changed


def subscription_set_enabled(*, subscription: Subscription, enabled: bool, actor: str, reason: str = "") -> bool:
    """The admin's enable / disable actions; False when it already was."""
    if enabled:
        changed = operations.subscription_enable(subscription_id=subscription.pk)
    else:
        changed = subscription_disable(subscription_id=subscription.pk, reason=reason or f"disabled by {actor}")
    if changed:
        write_logged(actor, "subscription.enable" if enabled else "subscription.disable", subscription.name)
    subscription.refresh_from_db()
    return changed


def subscription_rotate(*, subscription: Subscription, actor: str) -> str:
    secret = operations.subscription_secret_rotate(subscription_id=subscription.pk)
    write_logged(actor, "subscription.rotate", subscription.name)
    subscription.refresh_from_db()
    return secret


def subscription_token_set(*, subscription: Subscription, token: str, actor: str) -> bool:
    """Set the token the subscription sends (an endpoint's own key); False when it already was."""
    try:
        changed = endpoint_tokens.subscription_token_set(subscription_id=subscription.pk, token=token)
    except ValueError as exc:
        raise InvalidField(str(exc), field="token") from None
    if changed:
        write_logged(actor, "subscription.token_set", subscription.name)
    subscription.refresh_from_db()
    return changed


def subscription_test(*, subscription: Subscription, actor: str) -> Delivery:
    delivery = operations.subscription_send_test(subscription_id=subscription.pk)
    write_logged(actor, "subscription.test", subscription.name, delivery_id=delivery.pk)
    return delivery


# --- Deliveries by filter ---------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryFilter:
    subscription: str | None = None
    states: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    message: str | None = None
    limit: int = DELIVERIES_DEFAULT_PER_CALL


# Which states each action may touch, and which it picks when the filter names none.
DELIVERY_ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "retry": ((*DELIVERY_OPEN_STATES, DeliveryState.FAILED), (DeliveryState.FAILED,)),
    "cancel": ((*DELIVERY_OPEN_STATES, DeliveryState.FAILED), (*DELIVERY_OPEN_STATES, DeliveryState.FAILED)),
    "replay": (tuple(DeliveryState.values), (DeliveryState.FAILED,)),
}


def deliveries_matching(*, action: str, flt: DeliveryFilter) -> QuerySet[Delivery]:
    allowed, default = DELIVERY_ACTIONS[action]
    states = flt.states or default
    refused = [s for s in states if s not in allowed]
    if refused:
        raise InvalidField(
            f"'{action}' acts on deliveries that are {', '.join(allowed)}; not {', '.join(refused)}.", field="state"
        )
    if not (flt.subscription or flt.since or flt.until or flt.message or flt.states):
        raise InvalidField(
            "Narrow it down: give subscription, state, since, until or message (state alone is enough).",
            field="filter",
        )
    qs = Delivery.objects.filter(state__in=states)
    if flt.subscription:
        subscription_id = Subscription.objects.filter(name=flt.subscription).values_list("pk", flat=True).first()
        if subscription_id is None:
            raise InvalidField(f"No subscription named '{flt.subscription}'.", field="subscription")
        qs = qs.filter(subscription_id=subscription_id)
    if flt.since:
        qs = qs.filter(created_at__gte=flt.since)
    if flt.until:
        qs = qs.filter(created_at__lt=flt.until)
    if flt.message:
        qs = qs.filter(**message_lookup(flt.message))
    if action == "replay":
        # One with a replay still on its way is done (replaying it again returns that replay), so
        # the next call moves on to the ones left, and a repeated call sends nothing twice.
        on_its_way = Delivery.objects.filter(
            replay_of_id=Coalesce(OuterRef("replay_of_id"), OuterRef("pk")),
            state__in=DELIVERY_UNFINISHED_STATES,
        )
        qs = qs.exclude(Exists(on_its_way))
    return qs.order_by("id")


def message_lookup(raw: str) -> dict[str, str]:
    """A message name (aliases become canonical) or 'resource:*', as a lookup on the event."""
    name = raw.strip().lower()
    if name.endswith(":*"):
        try:
            message_canonical(name[:-1] + "any")
        except InvalidMessageName as exc:
            raise InvalidField(str(exc).replace(":any'", ":*'"), field="message") from None
        return {"event__message__startswith": name[:-1]}
    try:
        return {"event__message": message_canonical(name)}
    except InvalidMessageName as exc:
        raise InvalidField(str(exc), field="message") from None


_DELIVERY_SERVICES: dict[str, Callable[[int], bool]] = {
    "retry": lambda pk: operations.delivery_retry_now(delivery_id=pk),
    "cancel": lambda pk: operations.delivery_cancel(delivery_id=pk),
    # A replay still on its way is returned instead of a new one: asking twice sends one copy.
    "replay": lambda pk: operations.delivery_replay(delivery_id=pk) is not None,
}


def deliveries_act(*, action: str, flt: DeliveryFilter, dry_run: bool, actor: str) -> dict[str, Any]:
    """Retry, cancel or replay the deliveries a filter selects, oldest first, at most `limit`
    (and DELIVERIES_MAX_PER_CALL) of them; each is the admin's own action, safe to repeat. A dry
    run only counts."""
    qs = deliveries_matching(action=action, flt=flt)
    matched = qs.count()
    limit = max(1, min(flt.limit, DELIVERIES_MAX_PER_CALL))
    if dry_run:
        selected = min(matched, limit)
        return {"dry_run": True, "matched": matched, "selected": selected, "remaining": matched - selected}
    ids = list(qs.values_list("id", flat=True)[:limit])
    act = _DELIVERY_SERVICES[action]
    done = sum(1 for pk in ids if act(pk))
    result = {
        "dry_run": False,
        "matched": matched,
        "selected": len(ids),
        "changed": done,
        "skipped": len(ids) - done,
        "remaining": max(0, matched - len(ids)),
    }
    write_logged(actor, f"deliveries.{action}", flt.subscription or "*", **result)
    return result


# --- Schedules ----------------------------------------------------------------------------------
def schedule_of(subscription: Subscription) -> Schedule:
    schedule = Schedule.objects.select_related("subscription").filter(subscription=subscription).first()
    if schedule is None:
        raise NotFound(f"The subscription '{subscription.name}' has no schedule.", field="name")
    return schedule


def schedule_put(
    *, subscription: Subscription, values: Mapping[str, Any], actor: str, partial: bool
) -> tuple[Schedule, bool]:
    """Create the subscription's schedule or change it (only the fields given when `partial`),
    validated as the admin's form is. Returns it and whether it was created."""
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().filter(subscription=subscription).first()
        created = schedule is None
        if schedule is None:
            schedule = Schedule(subscription=subscription)
        elif not partial:
            fresh = Schedule(subscription=subscription)
            for name in ("message", "interval_seconds", "cron", "is_paused"):
                setattr(schedule, name, getattr(fresh, name))
        for name, value in values.items():
            setattr(schedule, name, value if value is not None or name != "cron" else "")
        try:
            schedule.full_clean(exclude=["subscription"])
        except ValidationError as exc:
            raise _first_error(exc) from None
        schedule_save(schedule=schedule)
    write_logged(actor, "schedule.create" if created else "schedule.update", subscription.name, changed=sorted(values))
    return schedule, created


def schedule_delete(*, subscription: Subscription, actor: str) -> None:
    schedule_of(subscription).delete()
    write_logged(actor, "schedule.delete", subscription.name)


def schedule_run(*, subscription: Subscription, actor: str) -> Tick:
    tick = schedule_run_now(schedule_id=schedule_of(subscription).pk)
    write_logged(actor, "schedule.run", subscription.name, event_id=tick.event_id)
    return tick
