"""Triggers: the engine's catalog, scheduler, file watcher and message listener, on a thread, an event loop and a
NATS connection of their own.

A tick must fire on time while the engine works through the runs the last one started: 10,000 schedules
firing at once leave the engine's event loop seconds of work, and a timer that comes due behind it waits its
turn (asyncio runs what is ready in order). On a thread of its own the scheduler waits at most Python's switch
interval (5 ms) for the interpreter lock instead. Nothing is shared with the engine's loop but the partitions
it holds and the live engines (`rank`, reads), its counters, and the definitions the catalog reads, handed to
the engine's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

from jetdag.engine.nats.setup import close, connect
from jetdag.engine.stores.defs import DefStore
from jetdag.engine.stores.files import FileStore
from jetdag.engine.stores.gate import GateStore
from jetdag.engine.stores.runs import RunStore
from jetdag.engine.stores.schedules import ScheduleStore

from .catalog import Catalog
from .context import EngineContext
from .filewatch import FileWatcher
from .listener import Listener
from .scheduler import Scheduler
from .supervisor import Supervisor

log = logging.getLogger(__name__)


class Triggers:
    def __init__(
        self,
        url: str,
        engine: EngineContext,
        rank: Callable[[str], int],
        owned: Callable[[], Iterable[int]],
        *,
        replicas: int = 1,
        clock: Callable[[], float] = time.time,
        file_settle: float = 1.0,
    ) -> None:
        self.url, self.engine, self.rank, self.owned, self.replicas = url, engine, rank, owned, replicas
        self.clock = clock
        self.file_settle = file_settle
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"jetdag-triggers-{self.engine.engine_id}", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the triggers' loop (its actors clean up) and wait for the thread, at most `timeout` seconds."""
        if self._thread is None:
            return
        await asyncio.to_thread(self._started.wait, timeout)
        if self._loop is not None and self._main is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._main.cancel)
        await asyncio.to_thread(self._thread.join, timeout)
        if self._thread.is_alive():
            log.warning("the triggers of engine %s did not stop within %g s", self.engine.engine_id, timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the triggers of engine %s stopped", self.engine.engine_id)

    async def _serve(self) -> None:
        self._loop, self._main = asyncio.get_running_loop(), asyncio.current_task()
        self._started.set()
        nc = await connect(self.url, f"jetdag {self.engine.engine_id} triggers")
        supervisor = Supervisor("triggers")
        try:
            js = nc.jetstream()
            runs = await RunStore.open(nc, js)
            ctx = EngineContext(
                nc=nc, js=js, runs=runs, publisher=runs.publisher, defs=await DefStore.open(js),
                gate=await GateStore.open(js), engine_id=self.engine.engine_id, partitions=self.engine.partitions,
                counters=self.engine.counters,
            )  # fmt: skip
            schedules = await ScheduleStore.open(js)
            # The engine's cache takes each definition the catalog reads: the first run of a version reads it there.
            catalog = Catalog(ctx, schedules, prime=self.engine.defs.remember, clock=self.clock)
            scheduler = Scheduler(ctx, catalog, schedules, self.rank, self.clock, self.owned)
            files = FileWatcher(ctx, catalog, scheduler, await FileStore.open(js), self.rank, settle=self.file_settle)
            listener = Listener(ctx, catalog, scheduler, self.replicas)
            # The catalog's watches come first: the others wait for it to be ready.
            for name, body in (("catalog", catalog.run), ("scheduler", scheduler.run),
                               ("files", files.run), ("listener", listener.run)):  # fmt: skip
                supervisor.start(name, body, permanent=True)
            await asyncio.Event().wait()
        finally:
            await supervisor.stop()
            await close(nc)
