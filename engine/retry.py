"""Retry delays: exponential backoff with jitter, deterministic for a given attempt."""

from __future__ import annotations

import zlib

from jetdag.engine.model import RetryPolicy


def stable_random(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts`, so replaying a run gives the same delays."""
    return zlib.crc32(":".join(map(str, parts)).encode()) / 2**32


def next_delay(policy: RetryPolicy, failed_attempt: int, rand: float) -> float:
    """Seconds to wait after attempt `failed_attempt` (1-based) failed; `rand` in [0, 1) drives jitter."""
    base = policy.initial_delay * policy.backoff_factor ** (failed_attempt - 1)
    base = min(base, policy.max_delay)
    return max(0.0, min(policy.max_delay, base * (1 + policy.jitter * (2 * rand - 1))))
