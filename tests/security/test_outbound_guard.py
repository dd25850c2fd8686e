"""The SSRF guard on the real delivery path: a subscription aimed at the hub's own network (loopback,
a name resolving to it, the cloud metadata address) gets a failed attempt that names the blocked
destination, and the local subscriber listening there receives nothing.
The rest of the suite allows private destinations for its 127.0.0.1 subscriber; these tests turn
the guard back on, in-process and in a worker started without the setting (on by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from routing.models import Delivery, DeliveryState
from routing.transport import exchange
from routing.transport.request import request_build
from tests.factories import DeliveryFactory, SubscriptionFactory
from tests.live import Subscriber, Worker, https_endpoint, pump_for, queue_purge, wait_until, workers_paused

GUARDED_QUEUE = "hub-test-guarded"

# (URL template, how the error names the destination, why it is blocked)
FORBIDDEN = [
    ("http://127.0.0.1:{port}/guarded", "127.0.0.1", "loopback"),
    ("http://localhost:{port}/guarded", "localhost (", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/guarded", "::ffff:127.0.0.1", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "metadata"),
]


def _pools_drop() -> None:
    # Pooled keep-alive connections were checked when they were opened; a test that changes the
    # setting makes the next request dial (and be checked) anew.
    exchange.session_get().close()


@pytest.fixture
def guard_on(settings) -> Iterator[None]:
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = False
    _pools_drop()
    yield
    _pools_drop()


def _failed_once(delivery: Delivery) -> Delivery:
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.FAILED
    assert delivery.last_status_code is None
    return delivery


@pytest.mark.django_db
@pytest.mark.parametrize(("template", "named", "reason"), FORBIDDEN)
def test_a_delivery_to_a_forbidden_destination_fails_and_reaches_nobody(
    guard_on, subscriber: Subscriber, template: str, named: str, reason: str
):
    subscription = SubscriptionFactory(url=template.format(port=subscriber.port), retry_enabled=False)
    delivery = DeliveryFactory(subscription=subscription)

    assert pump_for(delivery.pk) == "failed"

    delivery = _failed_once(delivery)
    [attempt] = delivery.attempts.all()
    assert not attempt.succeeded and attempt.status_code is None
    assert attempt.error.startswith("refused by the SSRF guard: ")
    assert named in attempt.error and reason in attempt.error
    assert "HUB_ALLOW_PRIVATE_DESTINATIONS" in attempt.error
    assert delivery.last_error == attempt.error
    assert subscriber.received() == []


@pytest.mark.django_db
def test_the_same_local_subscriber_is_reached_when_private_destinations_are_allowed(settings, subscriber):
    """The control for the test above: what blocks it is the guard, not an unreachable subscriber."""
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = True
    subscription = SubscriptionFactory(url=subscriber.url("/guarded"), retry_enabled=False)
    delivery = DeliveryFactory(subscription=subscription)
    assert pump_for(delivery.pk) == "delivered"
    assert len(subscriber.received("/guarded")) == 1


@pytest.mark.django_db
def test_the_metadata_address_stays_refused_when_private_destinations_are_allowed(settings):
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = True
    subscription = SubscriptionFactory(url="http://169.254.169.254/latest/meta-data/", retry_enabled=False)
    delivery = DeliveryFactory(subscription=subscription)
    assert pump_for(delivery.pk) == "failed"
    [attempt] = _failed_once(delivery).attempts.all()
    assert attempt.error.startswith("refused by the SSRF guard: Delivery to 169.254.169.254 is blocked")
    assert "never allowed" in attempt.error


@pytest.mark.django_db
def test_a_host_that_does_not_resolve_is_a_connection_failure_not_a_guard_refusal(guard_on):
    subscription = SubscriptionFactory(url="http://no-such-host.invalid/hook", retry_enabled=False)
    delivery = DeliveryFactory(subscription=subscription)
    assert pump_for(delivery.pk) == "failed"
    [attempt] = _failed_once(delivery).attempts.all()
    assert attempt.error.startswith("connection failed: The host 'no-such-host.invalid' cannot be resolved")


def test_the_delivery_session_is_guarded_and_follows_no_redirects():
    from routing.transport.netguard import GuardedAdapter

    session = exchange.session_new()
    assert isinstance(session.get_adapter("http://example.com/"), GuardedAdapter)
    assert isinstance(session.get_adapter("https://example.com/"), GuardedAdapter)
    assert session.trust_env is False and session.max_redirects == 0


def test_a_redirect_to_the_metadata_address_is_recorded_not_followed(settings, subscriber):
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = True
    from tests.live import Reply

    subscriber.program("/moved", Reply(302, json={}, headers={"Location": "http://169.254.169.254/latest/"}))
    request = request_build(
        url=subscriber.url("/moved"),
        message="order:new",
        message_id="m-1",
        payload={},
        parameters=[],
        webhook_id="evt-1",
        signing_secret="whsec_" + "a" * 44,
        token="tok",
    )
    result = exchange.request_send(request, timeout=5)
    assert (result.status_code, result.succeeded, result.error) == (302, False, "HTTP 302")
    assert result.response_headers["location"] == "http://169.254.169.254/latest/"
    assert [r.path for r in subscriber.received()] == ["/moved"]


# --- A real worker with the guard on by default -------------------------------------------------


@pytest.fixture
def guarded_worker(django_db_setup, _test_queue) -> Iterator[Worker]:
    """A Celery worker whose environment does not mention HUB_ALLOW_PRIVATE_DESTINATIONS at all:
    the guard is on because that is the default. It listens on a queue of its own."""
    from django.conf import settings

    from tests.conftest import _worker_env

    env = _worker_env(settings.DATABASES["default"])
    env.pop("HUB_ALLOW_PRIVATE_DESTINATIONS", None)
    env["CELERY_QUEUE"] = GUARDED_QUEUE
    queue_purge(GUARDED_QUEUE)
    log_path = Path(settings.VAR_DIR) / "test-worker-guarded" / "worker.log"
    live = Worker(env=env, log_path=log_path, queue=GUARDED_QUEUE).start()
    yield live
    live.stop()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_with_default_settings_refuses_loopback_and_metadata_destinations(guarded_worker, subscriber):
    from routing.tasks import deliveries_pump_task

    def all_failed() -> bool:
        return all(d.state == DeliveryState.FAILED for d in Delivery.objects.filter(pk__in=[d.pk for d in deliveries]))

    # The session's worker (private destinations allowed) must not sweep these up meanwhile.
    with workers_paused([guarded_worker]):
        deliveries = [
            DeliveryFactory(subscription=SubscriptionFactory(url=url.format(port=subscriber.port), retry_enabled=False))
            for url, _named, _reason in FORBIDDEN
        ]
        for delivery in deliveries:
            deliveries_pump_task.apply_async(args=[delivery.subscription_id], queue=GUARDED_QUEUE)
        wait_until(all_failed, timeout=60, message=f"guarded deliveries failed (log: {guarded_worker.log_path})")
    for delivery, (_url, named, reason) in zip(deliveries, FORBIDDEN, strict=True):
        [attempt] = _failed_once(delivery).attempts.all()
        assert attempt.error.startswith("refused by the SSRF guard: ")
        assert named in attempt.error and reason in attempt.error
    assert subscriber.received() == []


# --- TLS still verifies the name while the connection is pinned to the checked address ------------


@pytest.fixture
def https_localhost(tmp_path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names only 'localhost'."""
    with https_endpoint(tmp_path, "localhost") as served:
        yield served


def test_tls_verifies_the_host_name_while_the_dial_is_pinned_to_the_checked_address(https_localhost):
    """Private destinations allowed (the server is local), so the guard resolves 'localhost',
    checks it and dials 127.0.0.1 itself; the certificate is still checked against 'localhost'."""
    import requests

    from routing.transport.netguard import session_guard

    port, cert_path = https_localhost
    session = session_guard(requests.Session(), allow_private=True)
    # As the delivery session does; it also keeps REQUESTS_CA_BUNDLE from replacing `verify`.
    session.trust_env = False
    session.verify = str(cert_path)
    assert session.post(f"https://localhost:{port}/hook", data=b"{}", timeout=5).json() == {"ok": True}
    # The same server by its address: the certificate does not name 127.0.0.1, and TLS says so.
    with pytest.raises(requests.exceptions.SSLError, match="(?i)mismatch"):
        session.post(f"https://127.0.0.1:{port}/hook", data=b"{}", timeout=5)


# --- Credentials in a stored URL, and the link-local / metadata range, at send time ---------------


@pytest.fixture(params=[False, True], ids=["guard-on", "private-allowed"])
def either_setting(request, settings) -> Iterator[bool]:
    settings.HUB_ALLOW_PRIVATE_DESTINATIONS = request.param
    _pools_drop()
    yield request.param
    _pools_drop()


@pytest.mark.django_db
@pytest.mark.parametrize("userinfo", ["hub-user:pw-s3cret@", "hub-user@", ":pw-s3cret@"])
def test_a_stored_url_with_credentials_is_refused_at_send_time_and_not_retried(
    either_setting, subscriber: Subscriber, userinfo: str
):
    """Written past the form (a migration, a fixture, a queryset update), the URL's credentials
    would go out as an Authorization header. The attempt fails, is not retried (the same URL can
    only be refused again), and the endpoint receives nothing."""
    from routing.models import Subscription

    subscription = SubscriptionFactory(url=subscriber.url("/basic"), retry_enabled=True)
    Subscription.objects.filter(pk=subscription.pk).update(url=f"http://{userinfo}127.0.0.1:{subscriber.port}/basic")
    delivery = DeliveryFactory(subscription=subscription)

    assert pump_for(delivery.pk) == "failed"

    delivery = _failed_once(delivery)
    assert delivery.attempt_count == 1
    [attempt] = delivery.attempts.all()
    assert attempt.error.startswith("refused by the SSRF guard: Credentials in the URL")
    assert "not retried" in attempt.error and "s3cret" not in attempt.error
    assert subscriber.received() == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.170.23/v1/credentials", "metadata"),
        ("http://[fd00:ec2::23]/v1/credentials", "metadata"),
        ("http://[::ffff:169.254.170.23]/v1/credentials", "metadata"),
        ("http://[64:ff9b::169.254.169.254]/latest/meta-data/", "metadata"),
        ("http://169.254.10.10/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:169.254.10.10]/", "link-local"),
    ],
)
def test_a_delivery_to_link_local_or_metadata_fails_whatever_the_setting(either_setting, url: str, reason: str):
    subscription = SubscriptionFactory(url=url, retry_enabled=False)
    delivery = DeliveryFactory(subscription=subscription)
    assert pump_for(delivery.pk) == "failed"
    [attempt] = _failed_once(delivery).attempts.all()
    assert attempt.error.startswith("refused by the SSRF guard: Delivery to ")
    assert reason in attempt.error and "never allowed" in attempt.error


@pytest.mark.django_db
def test_a_delivery_to_a_deprecated_site_local_address_fails_while_the_guard_is_on(guard_on):
    subscription = SubscriptionFactory(url="http://[fec0::1]/hook", retry_enabled=False)
    delivery = DeliveryFactory(subscription=subscription)
    assert pump_for(delivery.pk) == "failed"
    [attempt] = _failed_once(delivery).attempts.all()
    assert attempt.error.startswith(
        "refused by the SSRF guard: Delivery to fec0::1 is blocked: it is a deprecated site-local address."
    )
