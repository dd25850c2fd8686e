import pytest

from routing.transport.exchange import ExchangeResult, attempt_outcome


def _result(**kwargs) -> ExchangeResult:
    return ExchangeResult(method="POST", url="http://example.test/", latency_ms=5, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "outcome"),
    [
        ({"status_code": 200, "succeeded": True, "reply": {}}, "success"),
        ({"status_code": None, "error": "timed out after 2s"}, "timeout"),
        ({"status_code": None, "error": "connection failed: refused"}, "connection_error"),
        ({"status_code": 200, "error": "HTTP 200 but the body is not JSON"}, "invalid_reply"),
        ({"status_code": 503, "error": "HTTP 503"}, "http_error"),
    ],
)
def test_attempt_outcome_names_what_happened_on_the_wire(kwargs, outcome):
    assert attempt_outcome(_result(**kwargs)) == outcome
