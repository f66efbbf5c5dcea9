"""One-for-one supervision: restarts with growing backoff, crash loops reported, clean stops."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from jetdag.actors.supervisor import Supervisor
from tests.helpers import eventually


def crashing(times: list[float], crashes: int, settled: asyncio.Event) -> Callable[[], Awaitable[None]]:
    """A body that records each start, crashes `crashes` times, then sets `settled` and runs until cancelled."""

    async def body() -> None:
        times.append(time.monotonic())
        if len(times) <= crashes:
            raise RuntimeError(f"crash #{len(times)}")
        settled.set()
        await asyncio.Event().wait()

    return body


async def test_a_crashing_child_is_restarted_until_it_runs() -> None:
    sup = Supervisor("test", min_backoff=0.01, max_backoff=0.1)
    starts: list[float] = []
    settled = asyncio.Event()
    sup.start("child", crashing(starts, 3, settled))
    await asyncio.wait_for(settled.wait(), 5)
    stats = sup.stats["child"]
    assert len(starts) == 4
    assert stats.restarts == 3
    assert stats.last_error == "RuntimeError: crash #3"
    assert not stats.crash_looping
    await sup.stop()


async def test_the_backoff_doubles_between_restarts() -> None:
    sup = Supervisor("test", min_backoff=0.02, max_backoff=1.0)
    starts: list[float] = []
    settled = asyncio.Event()
    sup.start("child", crashing(starts, 4, settled))
    await asyncio.wait_for(settled.wait(), 5)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 4
    for i, gap in enumerate(gaps):
        assert gap >= 0.02 * 2**i * 0.95, gaps  # each wait is at least the doubled backoff
    assert gaps[-1] > gaps[0] * 3, gaps
    await sup.stop()


async def test_too_many_crashes_in_the_window_mark_a_crash_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jetdag.actors.supervisor")
    sup = Supervisor("test", min_backoff=0.001, max_backoff=0.01, max_restarts=3, window=60.0)
    calls = 0

    async def always_crash() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("no database")

    sup.start("doomed", always_crash)
    await eventually(lambda: "doomed" in sup.stats and sup.stats["doomed"].crash_looping, timeout=5)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "test/doomed is crash-looping (4 restarts in 60s)" in errors[0]  # the 4th crash is one too many
    assert "no database" in errors[0]
    seen = calls
    await eventually(lambda: calls > seen + 1, timeout=5)  # reported, and still restarted
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # reported once
    await sup.stop()


async def test_a_permanent_child_is_restarted_after_a_normal_return() -> None:
    sup = Supervisor("test", min_backoff=0.001, max_backoff=0.01)
    calls = 0

    async def returns() -> None:
        nonlocal calls
        calls += 1

    sup.start("forever", returns, permanent=True)
    await eventually(lambda: calls >= 3, timeout=5)
    assert sup.stats["forever"].last_error is None
    await sup.stop()


async def test_a_transient_child_that_returns_is_not_restarted() -> None:
    sup = Supervisor("test", min_backoff=0.001)
    calls = 0

    async def returns() -> None:
        nonlocal calls
        calls += 1

    sup.start("once", returns)
    await sup.children["once"]  # its supervising task ends: there is nothing left to restart it
    assert calls == 1
    assert "once" not in sup.children
    assert sup.stats["once"].restarts == 0


async def test_stop_cancels_children_and_waits_for_them_to_end() -> None:
    sup = Supervisor("test")
    ended: list[str] = []
    running = {name: asyncio.Event() for name in ("a", "b")}

    def body(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            running[name].set()
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0)  # cleanup that itself awaits
                ended.append(name)

        return run

    for name in running:
        sup.start(name, body(name), permanent=True)
    await asyncio.gather(*(e.wait() for e in running.values()))

    await sup.stop("a")
    assert ended == ["a"]
    assert set(sup.children) == {"b"}

    await sup.stop()
    assert sorted(ended) == ["a", "b"]
    assert sup.children == {}


async def test_starting_a_running_name_again_leaves_it_alone() -> None:
    sup = Supervisor("test")
    calls = 0
    started = asyncio.Event()

    async def body() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.Event().wait()

    sup.start("one", body)
    await started.wait()
    first = sup.children["one"]
    sup.start("one", body)
    assert sup.children["one"] is first
    await sup.stop()
    assert calls == 1
