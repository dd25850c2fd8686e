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
    """Python sees the plain secret; the database only ever holds a Fernet token.

    Encryption is not deterministic, so the column cannot be filtered on; nothing needs to.
    A value that is not a Fernet token is read as is: that is a row the encrypting migration has
    not reached yet, and it is encrypted on its next save.

    Serialized (`dumpdata`, fixtures) it is written as a Fernet token too, so a dump holds no
    secret in clear, and read back (`loaddata`) by decrypting it: a dump loads where the same
    HUB_ENCRYPTION_KEYS are configured, and elsewhere fails naming the field.
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
    """A JSON value Python sees as it is; the column holds its JSON text encrypted, as a JSON
    string (so the column keeps its JSON type, and a row the encrypting migration has not reached
    yet, a plain JSON value, is read as is and encrypted on its next save).

    For a subscription's parameters, where an endpoint takes its credentials (the SSRF guard
    refuses them in a URL and says so). Encrypted like the secrets, so the database can neither
    filter on it nor look into it; dumps carry it encrypted too (EncryptedTextField)."""

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
    """The names of `model`'s fields kept encrypted: what key rotation must rewrite, and what a
    read that needs none of them (routing) leaves out rather than decrypt."""
    return tuple(f.name for f in model._meta.concrete_fields if isinstance(f, (EncryptedTextField, EncryptedJSONField)))


def _serialized_decrypt(name: str, value: str) -> str:
    """A Fernet token from a dump (loaddata) or a form, decrypted; refused with a sentence when
    none of the keys opens it, instead of being stored encrypted twice."""
    try:
        return secret_decrypt(value)
    except SecretUndecryptable:
        raise ValidationError(
            f"'{name}' holds an encrypted secret that none of HUB_ENCRYPTION_KEYS can "
            "decrypt (a dump from a hub with other keys?).",
            code="undecryptable",
        ) from None


def column_encrypt_existing(model: type[models.Model], field_name: str, *, using: str = "default") -> int:
    """Encrypt the values of `field_name` still stored in clear (rows older than the encrypted field).

    For migrations: works on raw column values, so it is safe to run twice and leaves rows that are
    already encrypted alone. Returns how many rows it encrypted.
    """
    return _column_rewrite(
        model, field_name, using=using, wanted=lambda v: not secret_is_encrypted(v), rewrite=secret_encrypt
    )


def column_decrypt_existing(model: type[models.Model], field_name: str, *, using: str = "default") -> int:
    """The reverse of column_encrypt_existing: put clear values back (when migrating backwards)."""
    return _column_rewrite(model, field_name, using=using, wanted=secret_is_encrypted, rewrite=secret_decrypt)


# How a JSON column holds an EncryptedJSONField's value: a JSON string of a Fernet token.
_JSON_TOKEN_PREFIX = '"' + TOKEN_PREFIX


def json_column_encrypt_existing(model: type[models.Model], field_name: str, *, using: str = "default") -> int:
    """column_encrypt_existing for an EncryptedJSONField: each clear JSON value becomes a JSON
    string of its encrypted text. Safe to run twice; returns how many rows it encrypted."""
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
