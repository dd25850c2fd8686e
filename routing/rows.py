"""Model instances from rows of routing.sql's statements, made as the ORM makes them from its own
queries (column order as routing.sql.model_columns lists them)."""

from __future__ import annotations

import functools
from typing import Any

from django.db import connection
from django.db.models import Model


def row_instance(model: type[Model], row: tuple[Any, ...], at: int) -> tuple[Any, int]:
    """The instance that the columns of `row` from `at` on make (as model_columns lists them),
    every field's database converters applied (a payload parsed, a secret decrypted, SQLite's
    text made datetimes), and where the next model's columns start."""
    names, converters = _layout(model)
    values = list(row[at : at + len(names)])
    for index, column, field_converters in converters:
        for convert in field_converters:
            values[index] = convert(values[index], column, connection)
    return model.from_db(connection.alias, names, values), at + len(names)


def row_related(instance: Model, name: str, row: tuple[Any, ...], at: int) -> tuple[Any, int]:
    """The object of `instance`'s foreign key `name` that the columns of `row` from `at` on make,
    None when they are all NULL (a LEFT JOIN that found none: the first column is the primary
    key), cached on `instance` as select_related caches it; and where the next model's columns
    start."""
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
        if found:
            converters.append((index, column, found))
    return [f.attname for f in fields], converters
