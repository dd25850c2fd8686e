import pytest
from cryptography.fernet import Fernet

from routing.encryption import SecretUndecryptable, secret_decrypt, secret_encrypt, secret_is_encrypted


def test_a_secret_round_trips_and_is_not_stored_in_clear(settings):
    settings.HUB_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    stored = secret_encrypt("whsec_plain")
    assert "whsec_plain" not in stored and secret_is_encrypted(stored)
    assert secret_decrypt(stored) == "whsec_plain"


def test_older_keys_still_decrypt_after_a_key_rotation(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.HUB_ENCRYPTION_KEYS = [old]
    stored = secret_encrypt("whsec_plain")
    settings.HUB_ENCRYPTION_KEYS = [new, old]
    assert secret_decrypt(stored) == "whsec_plain"
    # New encryptions use the first key only.
    settings.HUB_ENCRYPTION_KEYS = [new]
    assert secret_decrypt(secret_encrypt("x")) == "x"
    with pytest.raises(SecretUndecryptable, match="HUB_ENCRYPTION_KEYS"):
        secret_decrypt(stored)


def test_without_keys_development_derives_one_from_secret_key(settings):
    settings.HUB_ENCRYPTION_KEYS = []
    stored = secret_encrypt("whsec_plain")
    assert secret_decrypt(stored) == "whsec_plain"
    settings.SECRET_KEY = "another-secret-key-entirely-" + "x" * 30
    with pytest.raises(SecretUndecryptable):
        secret_decrypt(stored)


def test_a_malformed_key_is_a_configuration_error(settings):
    from django.core.exceptions import ImproperlyConfigured

    from routing.checks import encryption_keys_check

    settings.HUB_ENCRYPTION_KEYS = ["not-a-fernet-key"]
    with pytest.raises(ImproperlyConfigured):
        secret_encrypt("x")
    assert [e.id for e in encryption_keys_check()] == ["hub.E001"]
