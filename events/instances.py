"""Unsaved model instances made as `Model(**values)` makes them, for less CPU: a push builds an
Event and a Delivery, and Model.__init__ (two signals sent, every field looked up by name and
attname among the keywords) cost as much as the rest of their building."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.db.models import Model
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.fields.reverse_related import ForeignObjectRel
from django.db.models.signals import post_init, pre_init

from events.models import PayloadAttribute

M = TypeVar("M", bound=Model)


def attribute_stored_plainly(descriptor: Any) -> bool:
    """Whether setting a fresh instance's attribute only stores the value in its __dict__: no
    setter, or one of those known to (a foreign key's id also drops a cached related object,
    which a fresh instance has not)."""
    return not hasattr(descriptor, "__set__") or type(descriptor) in (ForeignKeyDeferredAttribute, PayloadAttribute)


@functools.cache
def _plan(model: type[Model]) -> tuple[tuple[tuple[str, str, bool, Callable[[], Any], bool], ...], frozenset[str]]:
    """Per field, in Model.__init__'s order: its name and attname, whether it is a relation, its
    default, whether its attribute is stored plainly; and every name a keyword may use."""
    plan = []
    for field in model._meta.fields:
        if field.column is None or field.generated:
            continue
        relation = isinstance(field.remote_field, ForeignObjectRel)
        plain = attribute_stored_plainly(model.__dict__.get(field.attname))
        plan.append((field.name, field.attname, relation, field.get_default, plain))
    names = frozenset(
        n for name, attname, relation, _, _ in plan for n in ((name, attname) if relation else (attname,))
    )
    return tuple(plan), names


def instance_new(model: type[M], /, **values: Any) -> M:
    """`model(**values)`: the same instance (its attributes set in the same order, related objects
    cached, defaults called), without Model.__init__ while no pre_init/post_init receiver listens
    and every keyword names a field."""
    plan, names = _plan(model)
    if pre_init.receivers or post_init.receivers or not values.keys() <= names:
        return model(**values)
    instance = model.__new__(model)
    instance._state = ModelState()
    held = instance.__dict__
    for name, attname, relation, default, plain in plan:
        if relation and name in values:
            setattr(instance, name, values[name])
            continue
        value = values[attname] if attname in values else default()
        if plain:
            held[attname] = value
        else:
            setattr(instance, attname, value)
    return instance
