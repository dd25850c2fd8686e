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


@pytest.mark.django_db
def test_a_stored_secret_is_decrypted_once_per_process(monkeypatch):
    """A fan-out's claim reads three encrypted columns per endpoint, a pump's claim its endpoint's:
    each token is opened once, then its plain text kept (routing.encryption)."""
    from cryptography.fernet import MultiFernet

    from routing.models import Subscription
    from tests.factories import SubscriptionFactory

    sub = SubscriptionFactory(parameters=[{"name": "shop", "value": "s1"}])
    opened: list[bytes] = []
    decrypt = MultiFernet.decrypt

    def counted(self, token, *args, **kwargs):
        opened.append(token)
        return decrypt(self, token, *args, **kwargs)

    monkeypatch.setattr(MultiFernet, "decrypt", counted)
    first = Subscription.objects.get(pk=sub.pk)
    again = Subscription.objects.get(pk=sub.pk)

    assert (again.signing_secret, again.token, again.parameters) == (
        first.signing_secret,
        first.token,
        first.parameters,
    )
    assert len(opened) == len(set(opened)) == 3
    # Each read is an object of its own: one changed is not what the next read gets.
    first.parameters.append({"name": "since", "value": "1"})
    assert Subscription.objects.get(pk=sub.pk).parameters == [{"name": "shop", "value": "s1"}]


@pytest.mark.django_db
def test_a_rotated_secret_is_read_as_it_is_now_by_a_process_that_read_the_old_one():
    """A secret changed is stored as a new token, so the plain text kept for the old token is never
    what the new one reads."""
    from routing.models import Subscription
    from routing.operations import subscription_secret_rotate
    from tests.factories import SubscriptionFactory

    sub = SubscriptionFactory(parameters=[{"name": "shop", "value": "s1"}])
    old = Subscription.objects.get(pk=sub.pk).signing_secret
    assert Subscription.objects.get(pk=sub.pk).signing_secret == old

    new = subscription_secret_rotate(subscription_id=sub.pk)
    changed = Subscription.objects.get(pk=sub.pk)
    changed.parameters = [{"name": "shop", "value": "s2"}]
    changed.save(update_fields=["parameters"])

    read = Subscription.objects.get(pk=sub.pk)
    assert read.signing_secret == new != old
    assert read.previous_signing_secret == old
    assert read.parameters == [{"name": "shop", "value": "s2"}]
