"""Backoff: exponential, capped, jittered within bounds, the same for the same attempt."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetdag.engine.durations import format_duration, parse_duration
from jetdag.engine.model import RetryPolicy
from jetdag.engine.retry import next_delay, stable_random

POLICY = RetryPolicy(max_attempts=10, initial_delay=1.0, max_delay=30.0, backoff_factor=2.0, jitter=0.0)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (9, 30.0)])
def test_delays_double_until_the_cap(attempt: int, delay: float) -> None:
    assert next_delay(POLICY, attempt, 0.5) == delay


@given(st.integers(1, 20), st.floats(0, 0.999))
def test_jitter_stays_within_its_fraction_and_the_cap(attempt: int, rand: float) -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=60.0, backoff_factor=3.0, jitter=0.2)
    base = min(60.0, 3.0 ** (attempt - 1))
    assert base * 0.8 - 1e-9 <= next_delay(policy, attempt, rand) <= min(60.0, base * 1.2) + 1e-9


def test_the_random_part_is_fixed_by_run_task_and_attempt() -> None:
    assert stable_random("R", "a", 1) == stable_random("R", "a", 1) != stable_random("R", "a", 2)


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("10s", 10), ("5m", 300), ("1h30m", 5400), ("2160h", 7_776_000), (3, 3)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1x", "m5", "-3s", "1h 30m", True])
def test_bad_durations_say_what_is_expected(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration_inverts_parse() -> None:
    for text in ("500ms", "10s", "1h30m", "2h"):
        assert format_duration(parse_duration(text)) == text
