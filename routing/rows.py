"""Model instances from rows of routing.sql's statements, made as the ORM makes them."""

from __future__ import annotations

import functools
from typing import Any

from django.db import connection
from django.db.models import Model


def row_instance(model: type[Model], row: tuple[Any, ...], at: int) -> tuple[Any, int]:
    """The instance `row`'s columns from `at` make, converters applied; and where the next model starts."""
    names, converters = _layout(model)
    values = list(row[at : at + len(names)])
    for index, column, field_converters in converters:
        for convert in field_converters:
            values[index] = convert(values[index], column, connection)
    return model.from_db(connection.alias, names, values), at + len(names)


def row_related(instance: Model, name: str, row: tuple[Any, ...], at: int) -> tuple[Any, int]:
    """`instance`'s foreign key `name` from `row` at `at` (None for a LEFT JOIN's NULLs), cached; and the next start."""
    field = instance._meta.get_field(name)
    model = field.related_model
    if row[at] is None:
        related, end = None, at + len(_layout(model)[0])
    else:
        related, end = row_instance(model, row, at)
    field.set_cached_value(instance, related)
    return related, end


@functools.cache
def _layout(model: type[Model]) -> tuple[list[str], list[tuple[int, Any, list[Any]]]]:
    fields = model._meta.concrete_fields
    converters = []
    for index, f in enumerate(fields):
        column = f.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + f.get_db_converters(connection)
        lazy = getattr(f, "from_db_lazy", None)
        if lazy is not None:
            # A payload is kept as its stored text until something needs it parsed (events.models).
            found = [*connection.ops.get_db_converters(column), lazy]
        if found:
            converters.append((index, column, found))
    return [f.attname for f in fields], converters
