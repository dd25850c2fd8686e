import logging

import pytest

from events.models import Store
from integrator.logredaction import SecretsRedactingFilter, secrets_redact
from routing.models import signing_secret_new


def _console_handler() -> logging.Handler:
    return next(
        h for h in logging.getLogger().handlers if any(isinstance(f, SecretsRedactingFilter) for f in h.filters)
    )


@pytest.fixture
def console_output():
    """What the configured console handler (JSON formatter and all) writes."""
    import io

    handler = _console_handler()
    stream = io.StringIO()
    old = handler.setStream(stream)
    yield stream
    handler.setStream(old)


def test_tokens_and_secrets_in_a_log_message_are_redacted(console_output):
    token = Store().token_set_new()
    secret = signing_secret_new()
    logging.getLogger("hub.test").warning("push with Authorization: Bearer %s signed by %s", token, secret)
    written = console_output.getvalue()
    assert "push with Authorization: Bearer [redacted]" in written
    assert token not in written and secret not in written


def test_secrets_in_extra_fields_and_tracebacks_are_redacted(console_output):
    secret = signing_secret_new()
    try:
        raise ValueError(f"cannot sign with {secret}")
    except ValueError:
        logging.getLogger("hub.test").exception("delivery failed", extra={"header": f"X-Hub-Token=tok {secret}"})
    written = console_output.getvalue()
    assert "cannot sign with [redacted]" in written
    assert secret not in written


@pytest.mark.django_db
def test_an_unauthenticated_push_logs_no_token(client, console_output):
    token = "hub_" + "x" * 43
    client.post("/events", b"{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert token not in console_output.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        "token=abc123&next=1",
        "{'token': 'abc123'}",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_redaction_patterns(text):
    assert "[redacted]" in secrets_redact(text)
    assert "abc123" not in secrets_redact(text) and "dXNlcjpwYXNz" not in secrets_redact(text)
