import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from routing.retry import STANDARD_SCHEDULE, Verdict, decide, jittered, retry_after_seconds, schedule_validate

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_standard_schedule_is_the_standard_webhooks_one():
    assert STANDARD_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


def test_each_failure_waits_the_next_step_then_fails_after_the_last():
    delays = [
        decide(succeeded=False, status_code=500, attempt_number=n, schedule=STANDARD_SCHEDULE) for n in range(1, 11)
    ]
    assert [d.delay_seconds for d in delays[:9]] == list(STANDARD_SCHEDULE)
    assert all(d.verdict == Verdict.RETRY for d in delays[:9])
    assert delays[9].verdict == Verdict.FAILED


def test_success_is_delivered_and_gone_stops():
    assert decide(succeeded=True, status_code=200, attempt_number=1, schedule=[1]).verdict == Verdict.DELIVERED
    assert decide(succeeded=False, status_code=410, attempt_number=1, schedule=[1]).verdict == Verdict.GONE


def test_retries_turned_off_fail_at_once():
    decision = decide(succeeded=False, status_code=500, attempt_number=1, schedule=[1, 2], retries_enabled=False)
    assert decision.verdict == Verdict.FAILED


def test_a_permanent_failure_fails_at_once_whatever_the_schedule():
    """The guard refused the URL itself (credentials in it): the next attempt would meet the same."""
    decision = decide(succeeded=False, status_code=None, attempt_number=1, schedule=STANDARD_SCHEDULE, permanent=True)
    assert decision.verdict == Verdict.FAILED


def test_jitter_stays_within_its_band():
    rng = random.Random(7)
    values = [jittered(100, 0.2, rng) for _ in range(200)]
    assert all(80 <= v <= 120 for v in values)
    assert len(set(values)) > 1
    assert jittered(0, 0.5) == 0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_on_429_and_503(status):
    decision = decide(succeeded=False, status_code=status, attempt_number=1, schedule=[5], retry_after=120)
    assert decision.delay_seconds == 120
    # A Retry-After shorter than the schedule does not make us come back sooner.
    assert (
        decide(succeeded=False, status_code=status, attempt_number=1, schedule=[60], retry_after=1).delay_seconds == 60
    )


def test_retry_after_is_ignored_on_other_statuses_and_capped():
    assert decide(succeeded=False, status_code=500, attempt_number=1, schedule=[5], retry_after=120).delay_seconds == 5
    capped = decide(
        succeeded=False, status_code=429, attempt_number=1, schedule=[5], retry_after=10**9, retry_after_max=3600
    )
    assert capped.delay_seconds == 3600


def test_retry_after_header_parsing():
    assert retry_after_seconds("120", now=NOW) == 120
    assert retry_after_seconds(format_datetime(NOW + timedelta(seconds=90), usegmt=True), now=NOW) == 90
    assert retry_after_seconds(format_datetime(NOW - timedelta(seconds=90), usegmt=True), now=NOW) == 0
    assert retry_after_seconds("soon", now=NOW) is None
    assert retry_after_seconds(None, now=NOW) is None


def test_schedule_validation():
    schedule_validate([0, 1.5, 60])
    schedule_validate(None)
    with pytest.raises(ValueError, match="Retry 2 of the schedule"):
        schedule_validate([1, -1])
    with pytest.raises(ValueError, match="must be a list"):
        schedule_validate("5,10")
