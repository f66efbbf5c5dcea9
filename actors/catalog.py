"""Catalog: the workflows that have triggers, at their newest version, and every workflow's schedule state, kept
current by two KV watches. One per engine, shared by its scheduler, file watcher and message listener.

Watching instead of reading at each firing is what lets 10,000 schedules fire in the same second, and what
makes a definition applied with `jetdag apply` (or re-applied from a changed file) take effect at once: the
triggers follow the newest version, and the runs they start are of that version.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

import msgpack
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.schedules import ScheduleState, has_schedule
from jetdag.engine.stores import packing
from jetdag.engine.stores.schedules import ScheduleStore

from .context import EngineContext

log = logging.getLogger(__name__)


class Catalog:
    def __init__(
        self,
        ctx: EngineContext,
        schedules: ScheduleStore,
        prime: Callable[[str, int, WorkflowSpec], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx, self.schedules, self.clock = ctx, schedules, clock
        self.touched: dict[int, float] = {}
        """Partition -> when (by `clock`) another engine last wrote the schedule state of one of its workflows: an
        owner at work, whom its backups leave to it (actors/scheduler.py)."""
        self._prime = prime or ctx.defs.remember
        """Handed every definition read (the engine's cache, so its runs need not read them again)."""
        self.specs: dict[str, tuple[WorkflowSpec, int]] = {}
        """Workflow -> (its newest spec, that version), for workflows with a trigger."""
        self.applied: dict[str, float] = {}
        """Workflow -> when its newest version was applied (epoch seconds)."""
        self.states: dict[str, tuple[ScheduleState, int]] = {}
        """Workflow -> (its schedule state, the key's revision; 0: never written)."""
        self.ready = asyncio.Event()
        """Set once both watches have delivered what was stored when they began."""
        self._listeners: list[asyncio.Queue[str]] = []
        self._loaded: set[str] = set()

    def subscribe(self) -> asyncio.Queue[str]:
        """A queue of the workflows whose triggers may have changed (a new version, or deleted), from now on."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._listeners.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(queue)

    def state(self, workflow: str) -> tuple[ScheduleState, int]:
        return self.states.get(workflow) or (ScheduleState(), 0)

    def _revision(self, workflow: str) -> int:
        found = self.states.get(workflow)
        return found[1] if found else 0

    def note(self, workflow: str, state: ScheduleState, revision: int) -> None:
        """A state this engine just wrote (or read): kept unless the watch already brought a newer one."""
        if revision > self.state(workflow)[1]:
            self.states[workflow] = (state, revision)

    async def refresh(self, workflow: str) -> tuple[ScheduleState, int]:
        """Read the state from KV (after a compare-and-set lost to another writer) and keep it."""
        state, revision = await self.schedules.read(workflow)
        self.note(workflow, state, revision)
        return self.state(workflow)

    async def run(self) -> None:
        defs = await self.ctx.js.key_value(S.DEFS_KV)
        firing = await self.ctx.nc.subscribe(S.FIRING, cb=self._on_firing)
        try:
            await asyncio.gather(self._watch_defs(defs), self._watch_states())
        finally:
            with contextlib.suppress(Exception):
                await firing.unsubscribe()

    async def _on_firing(self, msg: Msg) -> None:
        """Another engine starts firing a tick of its partitions: they are touched (at work) from now."""
        with contextlib.suppress(Exception):
            body = msgpack.unpackb(msg.data, raw=False)
            if body.get("engine") != self.ctx.engine_id:
                now = self.clock()
                for partition in body.get("partitions", ()):
                    self.touched[int(partition)] = now

    async def _watch_defs(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        try:
            while True:
                entry = await watcher.updates(timeout=None)  # None: as long as it takes
                if entry is None:
                    self._mark("defs")
                    continue
                if not isinstance(entry, KeyValue.Entry):
                    return  # stopped: the supervisor starts a new watch
                created = entry.created
                if isinstance(created, dt.datetime):
                    self.applied[entry.key] = created.timestamp()
                self._take(entry.key, entry.value, entry.revision or 0)
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await watcher.stop()

    def _take(self, workflow: str, value: bytes | None, revision: int) -> None:
        spec: WorkflowSpec | None = None
        if value:
            try:
                spec = WorkflowSpec.from_dict(packing.decode(value))
            except Exception as exc:  # a definition this engine cannot read must not stop the others' triggers
                log.warning(
                    "%s/%s@%d: cannot read it (%s); its triggers are ignored", S.DEFS_KV, workflow, revision, exc
                )
        if spec is not None:
            self._prime(workflow, revision, spec)
        if spec is not None and has_schedule(spec):
            self.specs[workflow] = (spec, revision)
        elif self.specs.pop(workflow, None) is None:
            return
        for queue in self._listeners:
            queue.put_nowait(workflow)

    async def _watch_states(self) -> None:
        known = self._revision
        async for workflow, state, revision in self.schedules.watch(lambda: self._mark("states"), known):
            self.note(workflow, state, revision)  # not this engine's own write: that one is known already
            self.touched[S.partition_of(workflow, self.ctx.partitions)] = self.clock()

    def _mark(self, which: str) -> None:
        self._loaded.add(which)
        if self._loaded >= {"defs", "states"}:
            self.ready.set()
