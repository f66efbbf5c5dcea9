"""Waiting on conditions, never on the clock."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(fn: Callable[[], T | Awaitable[T]], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Call `fn` until it returns something truthy without raising AssertionError; that value.

    After `timeout` seconds the last AssertionError (or a falsy result) fails the test.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last: BaseException = AssertionError(f"still {value!r} after {timeout}s")
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise last
        await asyncio.sleep(interval)


def eventually_sync(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """The same for code outside an event loop (subprocess tests)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
            last: BaseException = AssertionError(f"still {value!r} after {timeout}s")
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise last
        time.sleep(interval)
