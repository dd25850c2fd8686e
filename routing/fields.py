"""Model fields for secrets kept encrypted at rest."""

from __future__ import annotations

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
