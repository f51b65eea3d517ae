"""The LLM's circuit breaker on a controlled clock, and the Retry-After parsing that feeds it."""

from __future__ import annotations

import email.utils
import time

import pytest

from serve_app.circuit_breaker import MAX_OPEN_S, CircuitBreaker
from serve_app.generation import llm_event, retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_it_opens_after_the_threshold_of_failures_in_a_row_and_refuses_calls_while_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, open_s=30, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_success()  # a success in between resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow() and breaker.opened_total == 1
    clock.now += 29.9
    assert not breaker.allow() and 0 < breaker.retry_in_s() <= 0.1


def test_after_the_pause_one_probe_goes_through_and_its_outcome_decides() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, open_s=10, clock=clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()  # the probe failed: open again, for the whole pause
    assert breaker.state == "open" and breaker.opened_total == 2 and breaker.retry_in_s() == pytest.approx(10)
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()
    assert breaker.status() == {"state": "closed", "consecutive_failures": 0, "opened_total": 2, "retry_in_s": 0.0}


def test_a_retry_after_opens_it_at_once_for_that_long_within_a_cap() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=5, open_s=30, clock=clock)
    breaker.record_failure(retry_after_s=120)
    assert breaker.state == "open" and breaker.retry_in_s() == pytest.approx(120)
    breaker.record_success()
    breaker.record_failure(retry_after_s=5)  # shorter than open_s: the breaker's own pause
    assert breaker.retry_in_s() == pytest.approx(30)
    breaker.record_success()
    breaker.record_failure(retry_after_s=86_400)
    assert breaker.retry_in_s() == pytest.approx(MAX_OPEN_S)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0, open_s=1)
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=1, open_s=0)


def test_retry_after_in_seconds_milliseconds_or_as_an_http_date() -> None:
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 < retry_after_seconds({"retry-after": date}) <= 60
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_degraded_answers_are_counted_by_cause() -> None:
    assert llm_event("circuit open: the LLM endpoint keeps failing; next probe in 12 s") == "circuit_open"
    assert llm_event("APITimeoutError: Request timed out.") == "timeout"
    assert llm_event("InternalServerError: HTTP 500") == "error"
