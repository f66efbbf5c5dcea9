"""Waiting on conditions, never on the clock."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from jetdag.engine import subjects as S

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


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> list[RawStreamMsg]:
    """Every message `stream` holds on `subject`, oldest first."""
    out: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append(msg)
        seq = (msg.seq or seq) + 1


async def invalid_letters(js: JetStreamContext) -> list[RawStreamMsg]:
    """Every message dead-lettered to `jd.dlq._invalid`, oldest first."""
    return await stream_messages(js, S.DLQ, S.dlq_subject(S.INVALID_DLQ))


async def run_inputs(js: JetStreamContext, run_id: str) -> list[RawStreamMsg]:
    """Every message JD_EVENTS holds on the run's own subject (submission, results, timers), oldest first."""
    return await stream_messages(js, S.EVENTS, S.event_subject(S.partition_of(run_id), run_id))
