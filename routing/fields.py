"""Model fields for secrets kept encrypted at rest."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from routing.encryption import (
    TOKEN_PREFIX,
    SecretUndecryptable,
    secret_decrypt,
    secret_encrypt,
    secret_is_encrypted,
)


class EncryptedTextField(models.TextField):
    """Python sees the plain secret; the database and dumps only ever hold a Fernet token.

    A value that is not a token is a row not yet encrypted: read as is, encrypted on its next save.
    """

    description = "Text encrypted with HUB_ENCRYPTION_KEYS"

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if not value or not secret_is_encrypted(value):
            return value
        return secret_decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return secret_encrypt(value)

    def value_to_string(self, obj: models.Model) -> str:
        value = self.value_from_object(obj)
        return secret_encrypt(value) if value else ""

    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if not isinstance(value, str) or not secret_is_encrypted(value):
            return value
        return _serialized_decrypt(self.name, value)


class EncryptedJSONField(models.JSONField):
    """A JSON value kept as a JSON string of its encrypted text, so the column keeps its JSON type."""

    description = "JSON encrypted with HUB_ENCRYPTION_KEYS"

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None:
            return value
        return secret_encrypt(json.dumps(value, cls=self.encoder))

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        value = super().from_db_value(value, expression, connection)
        if isinstance(value, str) and secret_is_encrypted(value):
            return json.loads(secret_decrypt(value), cls=self.decoder)
        return value

    def value_to_string(self, obj: models.Model) -> Any:
        value = self.value_from_object(obj)
        return None if value is None else secret_encrypt(json.dumps(value, cls=self.encoder))

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and secret_is_encrypted(value):
            return json.loads(_serialized_decrypt(self.name, value), cls=self.decoder)
        return value


def encrypted_fields(model: type[models.Model]) -> tuple[str, ...]:
    """The names of `model`'s encrypted fields: what key rotation rewrites and routing's reads leave out."""
    return tuple(f.name for f in model._meta.concrete_fields if isinstance(f, (EncryptedTextField, EncryptedJSONField)))


def _serialized_decrypt(name: str, value: str) -> str:
    """A Fernet token from a dump or a form, decrypted; refused when no key opens it (not encrypted twice)."""
    try:
        return secret_decrypt(value)
    except SecretUndecryptable:
        raise ValidationError(
            f"'{name}' holds an encrypted secret that none of HUB_ENCRYPTION_KEYS can "
            "decrypt (a dump from a hub with other keys?).",
            code="undecryptable",
        ) from None


def column_encrypt_existing(model: type[models.Model], field_name: str, *, using: str = "default") -> int:
    """For migrations: encrypt the values of `field_name` still in clear; safe to run twice."""
    return _column_rewrite(
        model, field_name, using=using, wanted=lambda v: not secret_is_encrypted(v), rewrite=secret_encrypt
    )


def column_decrypt_existing(model: type[models.Model], field_name: str, *, using: str = "default") -> int:
    """The reverse of column_encrypt_existing: put clear values back (when migrating backwards)."""
    return _column_rewrite(model, field_name, using=using, wanted=secret_is_encrypted, rewrite=secret_decrypt)


# How a JSON column holds an EncryptedJSONField's value: a JSON string of a Fernet token.
_JSON_TOKEN_PREFIX = '"' + TOKEN_PREFIX


def json_column_encrypt_existing(model: type[models.Model], field_name: str, *, using: str = "default") -> int:
    """column_encrypt_existing for an EncryptedJSONField."""
    return _column_rewrite(
        model,
        field_name,
        using=using,
        wanted=lambda v: not v.startswith(_JSON_TOKEN_PREFIX),
        rewrite=lambda v: json.dumps(secret_encrypt(v)),
    )


def json_column_decrypt_existing(model: type[models.Model], field_name: str, *, using: str = "default") -> int:
    """The reverse of json_column_encrypt_existing (when migrating backwards)."""
    return _column_rewrite(
        model,
        field_name,
        using=using,
        wanted=lambda v: v.startswith(_JSON_TOKEN_PREFIX),
        rewrite=lambda v: secret_decrypt(json.loads(v)),
    )


def _column_rewrite(
    model: type[models.Model],
    field_name: str,
    *,
    using: str,
    wanted: Callable[[str], bool],
    rewrite: Callable[[str], str],
) -> int:
    from django.db import connections

    connection = connections[using]
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    column = quote(model._meta.get_field(field_name).column)
    pk = quote(model._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {pk}, {column} FROM {table}")  # noqa: S608 - quoted identifiers only
        rows = [(key, value) for key, value in cursor.fetchall() if value and wanted(value)]
        for key, value in rows:
            cursor.execute(f"UPDATE {table} SET {column} = %s WHERE {pk} = %s", [rewrite(value), key])  # noqa: S608
    return len(rows)
