"""One-for-one supervision: a crashed child is restarted with backoff; a crash loop is reported."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


async def cancel(*tasks: asyncio.Task[Any], owner: str = "", grace: float = 0.5) -> None:
    """Cancel `tasks` and wait until every one has ended, cancelling again any still running after `grace`.

    On 3.11 a cancellation that lands as an `asyncio.timeout()` inside the task expires can be lost
    (fixed in 3.12, cpython#102780): a loop around such a timeout would then run on, and a plain
    `task.cancel(); await task` would wait for it forever. `grace` must outlast the tasks' own cleanup
    on cancellation, which a second cancel would cut short. A cancellation of the caller goes through.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            log.warning("%s: %s did not stop when cancelled; cancelling again", owner, task.get_name())


@dataclass
class ChildStats:
    restarts: int = 0
    recent: list[float] = field(default_factory=list)
    crash_looping: bool = False
    last_error: str | None = None


class Supervisor:
    """Runs children as tasks. `permanent` children are restarted whenever they end, others only on a crash.

    Backoff doubles from `min_backoff` to `max_backoff`; more than `max_restarts` crashes within
    `window` seconds marks the child as crash-looping (logged as an error, visible in `stats`) and it
    keeps being restarted at the longest backoff: a crash loop is reported, not hidden, and not fatal.
    """

    def __init__(
        self,
        name: str,
        *,
        min_backoff: float = 0.05,
        max_backoff: float = 5.0,
        max_restarts: int = 5,
        window: float = 60.0,
    ) -> None:
        self.name, self.min_backoff, self.max_backoff = name, min_backoff, max_backoff
        self.max_restarts, self.window = max_restarts, window
        self.children: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self.stats: dict[str, ChildStats] = {}

    def start(self, name: str, body: Callable[[], Awaitable[None]], *, permanent: bool = False) -> bool:
        """Run `body()` under supervision as child `name`; False once the supervisor is stopping.

        A name already running is left alone.
        """
        if self.stopping:
            return False
        if name in self.children and not self.children[name].done():
            return True
        task = asyncio.create_task(self._keep(name, body, permanent), name=f"{self.name}/{name}")
        self.children[name] = task
        return True

    async def _keep(self, name: str, body: Callable[[], Awaitable[None]], permanent: bool) -> None:
        stats = self.stats.setdefault(name, ChildStats())
        backoff = self.min_backoff
        try:
            while True:
                started = time.monotonic()
                try:
                    await body()
                    if not permanent:
                        return
                    log.warning("%s/%s ended; restarting", self.name, name)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    stats.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("%s/%s crashed: %s", self.name, name, stats.last_error, exc_info=exc)
                now = time.monotonic()
                if now - started > self.window:
                    backoff = self.min_backoff  # it ran fine for a while: start the backoff over
                stats.restarts += 1
                stats.recent = [t for t in stats.recent if now - t < self.window] + [now]
                if len(stats.recent) > self.max_restarts:
                    if not stats.crash_looping:
                        log.error(
                            "%s/%s is crash-looping (%d restarts in %.0fs): %s",
                            self.name,
                            name,
                            len(stats.recent),
                            self.window,
                            stats.last_error,
                        )
                    stats.crash_looping = True
                    backoff = self.max_backoff
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
        finally:
            if self.children.get(name) is asyncio.current_task():
                del self.children[name]

    async def stop(self, name: str | None = None) -> None:
        """Cancel one child, or all of them for good (no new ones start), and wait until they have ended."""
        if name is None:
            self.stopping = True
        while True:
            names = [name] if name else list(self.children)
            tasks = [self.children[n] for n in names if n in self.children and not self.children[n].done()]
            if not tasks:
                return
            await cancel(*tasks, owner=self.name)
