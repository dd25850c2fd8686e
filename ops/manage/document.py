"""The hub as code: a file (YAML or JSON) of stores, subscriptions and their schedules that
`hubapply` makes true and `hubexport` writes from the hub.

    version: 1
    stores:
      - name: acme
        is_active: true
    subscriptions:
      - name: acme-erp
        url: https://erp.example.com/hub
        store: acme
        message_types: ["order:*"]
      - name: acme-shop
        url: https://shop.example.com/hub   # no message types: it only pulls
    schedules:
      - subscription: acme-shop
        message: get_orders
        interval_seconds: 300

Each item has the API's input shape (ops.manage.serializers; a schedule also names its subscription,
which the API takes from its URL) and is validated as the API and the admin's form validate it;
and since the file carries the schedules, a subscription it leaves with neither message types nor a
schedule is refused (the API, which makes a subscription before its schedule, cannot tell).
Applying is idempotent (a second run changes nothing), validates every item before writing
anything, writes in one transaction, and deletes only with `prune`.

Secrets are never in the file: an export leaves out signing secrets, endpoint tokens, store tokens
and the subscriptions' parameters (where endpoints keep credentials); applying never touches a
secret, makes new ones for what it creates (returned to be shown once), and leaves an existing
subscription's parameters alone unless the file gives `parameters`. A field absent from an item
takes the hub's default, except what the hub itself changes while running (`is_enabled` and
`disabled_reason`: the hub disables a failing endpoint; `parameters`: endpoints send them back),
which an item changes only when it names them. A schedule's run state (last and next run, last
error) is the hub's and never in the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.db import transaction
from rest_framework import serializers

from events.errors import HubError, _first_validation_error
from events.models import Event, Store
from ops.manage import services
from ops.manage.serializers import ScheduleItem, StoreInput, SubscriptionInput
from routing.models import Schedule, Subscription
from routing.subscriptions import RECEIVES_NOTHING, receives_nothing
from routing.timing import schedule_validate

DOCUMENT_VERSION = 1
# What the hub changes by itself while running: applied only when an item names it.
KEPT_WHEN_ABSENT = ("parameters", "is_enabled", "disabled_reason")
# Never written to a file: credentials.
NOT_EXPORTED = ("parameters",)
# What a file says of a schedule, besides its subscription.
SCHEDULE_FIELDS = ("message", "interval_seconds", "cron", "is_paused")
DOCUMENT_KEYS = ("version", "stores", "subscriptions", "schedules")


class DocumentInvalid(Exception):
    """A file the hub refuses, naming the item and the field."""

    def __init__(self, where: str, detail: str, field: str | None = None) -> None:
        self.where, self.field, self.detail = where, field, detail
        super().__init__(f"{where}: {field}: {detail}" if field else f"{where}: {detail}")


@dataclass(frozen=True)
class Change:
    action: str  # create, update, delete, disable
    kind: str  # store, subscription, schedule (named by its subscription)
    name: str
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.action} {self.kind} '{self.name}'"
        return f"{text}: {', '.join(self.fields)}" if self.fields else text


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # By subscription name.
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ApplyResult:
    changes: list[Change]
    # (what, name, secret): made for what was created, shown once by the caller.
    secrets: list[tuple[str, str, str]] = field(default_factory=list)


# --- Reading and writing files ------------------------------------------------------------------
def document_load(path: str | Path, text: str | None = None) -> Any:
    """A file's document: JSON when it ends in .json, else YAML (which reads JSON too)."""
    name = str(path)
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    try:
        if name.endswith(".json"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise DocumentInvalid(name, f"not valid {'JSON' if name.endswith('.json') else 'YAML'}: {exc}") from None


def document_dump(document: Mapping[str, Any], *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True, default_flow_style=False, width=120)


# --- Export -------------------------------------------------------------------------------------
def hub_export() -> dict[str, Any]:
    """The hub's stores, subscriptions and schedules as a document, sorted by (subscription) name,
    without secrets."""
    stores = [{"name": s.name, "is_active": s.is_active} for s in Store.objects.order_by("name")]
    subscriptions = [
        {f: services.subscription_field_value(s, f) for f in services.SUBSCRIPTION_FIELDS if f not in NOT_EXPORTED}
        for s in Subscription.objects.select_related("store").order_by("name")
    ]
    schedules = [
        {"subscription": s.subscription.name, **{f: getattr(s, f) for f in SCHEDULE_FIELDS}}
        for s in Schedule.objects.select_related("subscription").order_by("subscription__name")
    ]
    return {"version": DOCUMENT_VERSION, "stores": stores, "subscriptions": subscriptions, "schedules": schedules}


# --- Plan and apply -----------------------------------------------------------------------------
def _items(document: Mapping[str, Any], key: str) -> list[Any]:
    items = document.get(key) or []
    if not isinstance(items, list):
        raise DocumentInvalid(key, f"'{key}' must be a list of items.")
    return items


def _validated(serializer_class: type[serializers.Serializer], item: Any, where: str) -> dict[str, Any]:
    serializer = serializer_class(data=item)
    if not serializer.is_valid():
        field_name, text = _first_validation_error(serializer.errors)
        raise DocumentInvalid(where, text, field_name)
    return dict(serializer.validated_data)


def _where(key: str, index: int, item: Any, by: str = "name") -> str:
    name = item.get(by) if isinstance(item, Mapping) else None
    return f"{key}[{index}] ('{name}')" if isinstance(name, str) else f"{key}[{index}]"


def hub_plan(document: Any, *, prune: bool = False) -> Plan:
    """What applying `document` would change, every item validated; writes nothing."""
    if not isinstance(document, Mapping):
        raise DocumentInvalid(
            "document", "The file must hold an object with 'stores', 'subscriptions' and 'schedules'."
        )
    unknown = sorted(set(document) - set(DOCUMENT_KEYS))
    if unknown:
        raise DocumentInvalid("document", f"Unknown key '{unknown[0]}'; use {', '.join(DOCUMENT_KEYS)}.")
    if document.get("version", DOCUMENT_VERSION) != DOCUMENT_VERSION:
        raise DocumentInvalid("document", f"This hub reads version {DOCUMENT_VERSION} files.", "version")
    plan = Plan()

    existing_stores = {s.name: s for s in Store.objects.all()}
    for index, item in enumerate(_items(document, "stores")):
        where = _where("stores", index, item)
        values = {"is_active": True, **_validated(StoreInput, item, where)}
        name = values["name"]
        if name in plan.stores:
            raise DocumentInvalid(where, f"The store '{name}' is declared twice.", "name")
        plan.stores[name] = values
        current = existing_stores.get(name)
        if current is None:
            plan.changes.append(Change("create", "store", name))
        else:
            changed = tuple(f for f, v in values.items() if getattr(current, f) != v)
            if changed:
                plan.changes.append(Change("update", "store", name, changed))

    def store_lookup(name: str) -> Store | None:
        # A store the file creates is not in the database yet; a stand-in passes validation.
        return existing_stores.get(name) or (Store(name=name) if name in plan.stores else None)

    existing_subscriptions = {s.name: s for s in Subscription.objects.select_related("store")}
    defaults = services.subscription_defaults()
    places: dict[str, str] = {}
    for index, item in enumerate(_items(document, "subscriptions")):
        where = _where("subscriptions", index, item)
        declared = _validated(SubscriptionInput, item, where)
        name = declared["name"]
        if name in plan.subscriptions:
            raise DocumentInvalid(where, f"The subscription '{name}' is declared twice.", "name")
        current = existing_subscriptions.get(name)
        values = {**{f: v for f, v in defaults.items() if f not in KEPT_WHEN_ABSENT}, **declared}
        plan.subscriptions[name] = values
        places[name] = where
        try:
            if current is None:
                services.subscription_check(values, store_lookup=store_lookup)
                plan.changes.append(Change("create", "subscription", name))
                continue
            changed = services.subscription_changes(current, values)
            if changed:
                services.subscription_check(values, instance=current, store_lookup=store_lookup)
                plan.changes.append(Change("update", "subscription", name, tuple(changed)))
        except services.InvalidField as exc:
            raise DocumentInvalid(where, exc.detail, exc.field) from None

    existing_schedules = _schedules_plan(document, plan, set(existing_subscriptions), prune=prune)
    for name, values in plan.subscriptions.items():
        # The file carries the schedules, so here, unlike the API (subscription first, schedule
        # after), a subscription left with neither message types nor a schedule is known to get nothing.
        kept = name in plan.schedules or (not prune and name in existing_schedules)
        if receives_nothing(message_types=values.get("message_types"), has_schedule=kept):
            raise DocumentInvalid(places[name], RECEIVES_NOTHING, "message_types")

    if prune:
        # Before the subscriptions: a schedule goes with its subscription anyway.
        for name in sorted(set(existing_schedules) - set(plan.schedules)):
            plan.changes.append(Change("delete", "schedule", name))
        for name in sorted(set(existing_subscriptions) - set(plan.subscriptions)):
            plan.changes.append(Change("delete", "subscription", name))
        for name in sorted(set(existing_stores) - set(plan.stores)):
            store = existing_stores[name]
            # A store's events keep their history: such a store is disabled, not deleted.
            if Event.objects.filter(store=store).exists():
                if store.is_active:
                    plan.changes.append(Change("disable", "store", name, ("is_active",)))
            else:
                plan.changes.append(Change("delete", "store", name))
    return plan


def _schedules_plan(document: Mapping[str, Any], plan: Plan, existing: set[str], *, prune: bool) -> dict[str, Schedule]:
    """The file's schedules into `plan`, each validated as the API and the admin's form validate
    one; returns the hub's schedules by subscription name."""
    current_schedules = {s.subscription.name: s for s in Schedule.objects.select_related("subscription")}
    defaults = {f: Schedule._meta.get_field(f).get_default() for f in SCHEDULE_FIELDS}
    for index, item in enumerate(_items(document, "schedules")):
        where = _where("schedules", index, item, by="subscription")
        values = {**defaults, **_validated(ScheduleItem, item, where)}
        name = values.pop("subscription")
        if name in plan.schedules:
            raise DocumentInvalid(
                where, f"The subscription '{name}' has two schedules; it may have one.", "subscription"
            )
        if name not in plan.subscriptions:
            if name not in existing:
                raise DocumentInvalid(where, f"No subscription named '{name}'.", "subscription")
            if prune:
                raise DocumentInvalid(
                    where, f"The subscription '{name}' is not in the file, so --prune would delete it.", "subscription"
                )
        errors = schedule_validate(
            message=values["message"], interval_seconds=values["interval_seconds"], cron=values["cron"]
        )
        if errors:
            field_name = next(f for f in SCHEDULE_FIELDS if f in errors)
            raise DocumentInvalid(where, errors[field_name], field_name)
        plan.schedules[name] = values
        current = current_schedules.get(name)
        if current is None:
            plan.changes.append(Change("create", "schedule", name))
        else:
            changed = tuple(f for f, v in values.items() if getattr(current, f) != v)
            if changed:
                plan.changes.append(Change("update", "schedule", name, changed))
    return current_schedules


def hub_apply(document: Any, *, actor: str, dry_run: bool = False, prune: bool = False) -> ApplyResult:
    """Make the hub match `document`: every item is validated before anything is written, and all
    of it is written in one transaction (a failure leaves the hub as it was)."""
    plan = hub_plan(document, prune=prune)
    result = ApplyResult(changes=plan.changes)
    if dry_run or not plan.changes:
        return result
    with transaction.atomic():
        for change in plan.changes:
            try:
                _change_write(change, plan, actor, result)
            except HubError as exc:
                # Valid when planned, refused when written: changed meanwhile by someone else.
                raise DocumentInvalid(f"{change.kind} '{change.name}'", exc.detail, exc.field) from None
    return result


def _change_write(change: Change, plan: Plan, actor: str, result: ApplyResult) -> None:
    if change.kind == "store":
        if change.action == "create":
            _, token = services.store_create(values=plan.stores[change.name], actor=actor)
            result.secrets.append(("store token", change.name, token))
        elif change.action == "update":
            store = Store.objects.get(name=change.name)
            services.store_update(store=store, values=plan.stores[change.name], actor=actor)
        elif change.action == "disable":
            store = Store.objects.get(name=change.name)
            services.store_update(store=store, values={"is_active": False}, actor=actor)
        else:
            Store.objects.filter(name=change.name).delete()
            services.write_logged(actor, "store.delete", change.name)
        return
    if change.kind == "schedule":
        subscription = Subscription.objects.get(name=change.name)
        if change.action == "delete":
            services.schedule_delete(subscription=subscription, actor=actor)
        else:
            # The whole schedule, as the API's PUT: its next run is worked out again only when its
            # timing changed or it was resumed (routing.schedules.schedule_save).
            values = plan.schedules[change.name]
            services.schedule_put(subscription=subscription, values=values, actor=actor, partial=False)
        return
    if change.action == "create":
        subscription = services.subscription_create(values=plan.subscriptions[change.name], actor=actor)
        result.secrets.append(("signing secret", change.name, subscription.signing_secret))
        result.secrets.append(("endpoint token", change.name, subscription.token))
    elif change.action == "update":
        subscription = Subscription.objects.select_related("store").get(name=change.name)
        services.subscription_update(subscription=subscription, values=plan.subscriptions[change.name], actor=actor)
    else:
        for subscription in Subscription.objects.filter(name=change.name):
            subscription.delete()
        services.write_logged(actor, "subscription.delete", change.name)
