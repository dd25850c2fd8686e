"""Model instances from rows of routing.sql's statements, made as the ORM makes them."""

from __future__ import annotations

import functools
from typing import Any

from django.db import connection
from django.db.models import Model
from django.db.models.base import DEFERRED, ModelState
from django.db.models.signals import post_init, pre_init


def row_instance(
    model: type[Model], row: tuple[Any, ...], at: int, fields: tuple[str, ...] | None = None
) -> tuple[Any, int]:
    """The instance `row`'s columns from `at` make, converters applied; and where the next model
    starts. `fields`: the attnames the row holds, in field order (routing.sql.model_columns'), the
    others deferred as the ORM's only() leaves them; None for all."""
    names, places, converters = _layout(model, fields)
    width = len(places)
    if places is names:
        values = list(row[at : at + width])
    else:
        values = [DEFERRED] * len(names)
        for place, value in zip(places, row[at : at + width], strict=True):
            values[place] = value
    for index, column, field_converters in converters:
        for convert in field_converters:
            values[index] = convert(values[index], column, connection)
    return _instance(model, names, values), at + width


def _instance(model: type[Model], names: list[str], values: list[Any]) -> Model:
    """model.from_db(alias, names, values), without Model.__init__'s per-field setattr when no
    pre_init/post_init receiver listens: the same instance state, the same attributes (the
    fields' descriptors store a fresh instance's values in its __dict__), for a fraction of the
    CPU on every claimed row."""
    if pre_init.has_listeners(model) or post_init.has_listeners(model):
        return model.from_db(connection.alias, names, values)
    instance = model.__new__(model)
    state = instance._state = ModelState()
    state.adding = False
    state.db = connection.alias
    instance.__dict__.update((name, value) for name, value in zip(names, values, strict=True) if value is not DEFERRED)
    return instance


def row_related(
    instance: Model, name: str, row: tuple[Any, ...], at: int, fields: tuple[str, ...] | None = None
) -> tuple[Any, int]:
    """`instance`'s foreign key `name` from `row` at `at` (None for a LEFT JOIN's NULLs), cached; and
    the next start. `fields` as row_instance's."""
    field = instance._meta.get_field(name)
    model = field.related_model
    if row[at] is None:
        related, end = None, at + len(_layout(model, fields)[1])
    else:
        related, end = row_instance(model, row, at, fields)
    field.set_cached_value(instance, related)
    return related, end


@functools.cache
def _layout(
    model: type[Model], only: tuple[str, ...] | None
) -> tuple[list[str], list[int] | list[str], list[tuple[int, Any, list[Any]]]]:
    """Every field's attname; where each of the row's columns goes among them (the same list when
    the row holds them all); and the converters of the fields the row holds."""
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    held = range(len(fields)) if only is None else [names.index(name) for name in only]
    converters = []
    for index in held:
        f = fields[index]
        column = f.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + f.get_db_converters(connection)
        lazy = getattr(f, "from_db_lazy", None)
        if lazy is not None:
            # A payload is kept as its stored text until something needs it parsed (events.models).
            found = [*connection.ops.get_db_converters(column), lazy]
        if found:
            converters.append((index, column, found))
    return names, (names if only is None else list(held)), converters
