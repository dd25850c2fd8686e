"""Model instances from rows of routing.sql's statements, made as the ORM makes them."""

from __future__ import annotations

import functools
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import Model
from django.db.models.base import DEFERRED, ModelState
from django.db.models.signals import post_init, pre_init

from events.instances import attribute_stored_plainly


def row_instance(
    model: type[Model], row: tuple[Any, ...], at: int, fields: tuple[str, ...] | None = None
) -> tuple[Any, int]:
    """The instance `row`'s columns from `at` make, converters applied; and where the next model
    starts. `fields`: the attnames the row holds, in field order (routing.sql.model_columns'), the
    others deferred as the ORM's only() leaves them; None for all."""
    names, held, places, converters, plain = _layout(model, fields)
    width = len(held)
    values = list(row[at : at + width])
    for index, column, field_converters in converters:
        for convert in field_converters:
            values[index] = convert(values[index], column, connection)
    return _instance(model, names, held, places, values, plain=plain), at + width


def _instance(
    model: type[Model], names: list[str], held: list[str], places: list[int], values: list[Any], *, plain: bool
) -> Model:
    """model.from_db(alias, names, values), without Model.__init__'s per-field setattr when no
    pre_init/post_init receiver is connected and the fields' setters (`plain`) only store a fresh
    instance's value in its __dict__: the same instance, for less CPU on every claimed row."""
    if not plain or pre_init.receivers or post_init.receivers:
        full = [DEFERRED] * len(names)
        for place, value in zip(places, values, strict=True):
            full[place] = value
        return model.from_db(DEFAULT_DB_ALIAS, names, full)
    instance = model.__new__(model)
    state = instance._state = ModelState()
    state.adding = False
    # django.db.connection is the default database's.
    state.db = DEFAULT_DB_ALIAS
    instance.__dict__.update(zip(held, values, strict=True))
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
) -> tuple[list[str], list[str], list[int], list[tuple[int, Any, list[Any]]], bool]:
    """Every field's attname; the attnames the row holds and where each goes among them; the
    converters of the row's columns, by their place in the row; and whether each held field's
    attribute is set by storing the value in the instance's __dict__ (no setter, or one of those
    known to)."""
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    places = list(range(len(fields))) if only is None else [names.index(name) for name in only]
    converters = []
    for index, place in enumerate(places):
        f = fields[place]
        column = f.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + f.get_db_converters(connection)
        lazy = getattr(f, "from_db_lazy", None)
        if lazy is not None:
            # A payload is kept as its stored text until something needs it parsed (events.models).
            found = [*connection.ops.get_db_converters(column), lazy]
        if found:
            converters.append((index, column, found))
    plain = all(attribute_stored_plainly(model.__dict__.get(names[place])) for place in places)
    return names, [names[place] for place in places], places, converters, plain
