"""Model fields for secrets kept encrypted at rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import models

from routing.encryption import secret_decrypt, secret_encrypt, secret_is_encrypted


class EncryptedTextField(models.TextField):
    """Python sees the plain secret; the database only ever holds a Fernet token.

    Encryption is not deterministic, so the column cannot be filtered on; nothing needs to.
    A value that is not a Fernet token is read as is: that is a row the encrypting migration has
    not reached yet, and it is encrypted on its next save.
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
