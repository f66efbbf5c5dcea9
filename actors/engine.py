"""Engine: holds partition leases and runs a PartitionOwner for each partition it holds, plus the inbox and the reaper.

A lease is a key in `jd_leases` (bucket TTL = lease TTL), renewed by compare-and-set. An engine
that cannot renew a lease in time stops its partition before another engine can take it over.

Engines share the partitions evenly (`engine.balance.share` over the roster of live engines). An
engine takes free partitions up to its share, and one holding more than its share (another engine
joined) hands over one partition per round, so a join moves partitions one at a time instead of
stopping half the runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from jetdag.engine import subjects as S
from jetdag.engine.balance import share
from jetdag.engine.errors import StaleOwner
from jetdag.engine.nats.setup import farewell
from jetdag.engine.stores.files import FileStore
from jetdag.engine.stores.leases import LeaseStore
from jetdag.engine.stores.schedules import ScheduleStore

from .catalog import Catalog
from .context import EngineContext
from .filewatch import FileWatcher
from .inbox import Inbox
from .listener import Listener
from .partition import PartitionOwner
from .reaper import Reaper
from .scheduler import Scheduler
from .supervisor import Supervisor

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        ctx: EngineContext,
        *,
        lease_ttl: float = 6.0,
        replicas: int = 1,
        clock: Callable[[], float] = time.time,
        file_settle: float = 1.0,
    ) -> None:
        self.ctx, self.lease_ttl, self.replicas, self.clock = ctx, lease_ttl, replicas, clock
        self.file_settle = file_settle
        self.scheduler: Scheduler | None = None
        self.supervisor = Supervisor("engine")
        self.held: dict[int, int] = {}  # partition -> lease revision (the fencing token)
        self._renewed: dict[int, float] = {}
        self.reaper = Reaper(ctx.nc, ctx.js, ctx.engine_id)
        self.ready = asyncio.Event()
        """Set once this engine has looked at every partition (and taken its share of the free ones)."""

    async def run(self) -> None:
        leases = await LeaseStore.open(self.ctx.js)
        self.supervisor.start("inbox", Inbox(self.ctx).run, permanent=True)
        # Every engine reaps dead workers; reaping twice is harmless (see reaper.py).
        self.supervisor.start("reaper", self.reaper.run, permanent=True)
        await self._start_triggers()
        try:
            while True:
                await self._tend(leases)
                self.ready.set()
                await asyncio.sleep(self.lease_ttl / 3)
        finally:
            await self.supervisor.stop()
            held, self.held = self.held, {}
            # Hand the partitions over at once instead of after the TTL.
            releases = [leases.release(S.lease_key(p), revision) for p, revision in held.items()]
            await farewell(*releases, leases.withdraw(self.ctx.engine_id))

    def owns(self, workflow: str) -> bool:
        """Whether this engine fires the workflow's triggers first: it owns the workflow's partition."""
        return S.partition_of(workflow, self.ctx.partitions) in self.held

    async def _start_triggers(self) -> None:
        """Triggers run on every engine: each fires what its partitions own and backs the others up."""
        schedules = await ScheduleStore.open(self.ctx.js)
        catalog = Catalog(self.ctx, schedules)
        self.scheduler = Scheduler(self.ctx, catalog, schedules, self.owns, self.clock)
        files = FileWatcher(self.ctx, catalog, self.scheduler, await FileStore.open(self.ctx.js), self.owns,
                            settle=self.file_settle)  # fmt: skip
        listener = Listener(self.ctx, catalog, self.scheduler, self.replicas)
        # The catalog's watches come first: the others wait for it to be ready, and restart with it.
        for name, body in (("catalog", catalog.run), ("scheduler", self.scheduler.run),
                           ("files", files.run), ("listener", listener.run)):  # fmt: skip
            self.supervisor.start(name, body, permanent=True)

    async def _tend(self, leases: LeaseStore) -> None:
        me = self.ctx.engine_id
        await self._renew(leases)
        target = len(self.held)  # when the roster cannot be read: keep what is held, take nothing new
        try:
            await leases.announce(me)
            target = share(self.ctx.partitions, await leases.engines(), me)
        except Exception as exc:
            log.warning("engine roster in %s: %s", S.LEASES_KV, exc)
        for p in range(self.ctx.partitions):
            if p in self.held or len(self.held) >= target:
                continue
            try:
                if (revision := await leases.acquire(S.lease_key(p), me)) is not None:
                    self.held[p], self._renewed[p] = revision, time.monotonic()
                    self.supervisor.start(f"partition-{p}", PartitionOwner(self.ctx, p).run, permanent=True)
                    log.info("engine %s owns partition %d", me, p)
            except Exception as exc:
                log.warning("lease %s: %s", S.lease_key(p), exc)
        if len(self.held) > target:
            await self._hand_over(leases, max(self.held))

    async def _renew(self, leases: LeaseStore) -> None:
        """Renew every held lease at once: one after another, each waiting its turn in an event loop busy
        with thousands of runs, sixteen renewals outlasted the TTL and the engine lost its own partitions."""
        held, sent = list(self.held.items()), time.monotonic()
        results = await asyncio.gather(
            *(leases.renew(S.lease_key(p), self.ctx.engine_id, revision) for p, revision in held),
            return_exceptions=True,
        )
        for (p, _), result in zip(held, results, strict=True):
            if isinstance(result, int):
                self.held[p], self._renewed[p] = result, sent
            elif isinstance(result, StaleOwner):
                log.warning(
                    "engine %s lost partition %d: its lease lapsed or another engine took it", self.ctx.engine_id, p
                )
                await self._lose(p)
            else:
                log.warning("lease %s: %s", S.lease_key(p), result)
                # Unable to prove ownership: stop writing before the lease can lapse and pass on.
                if time.monotonic() - self._renewed[p] > self.lease_ttl * 0.7:
                    await self._lose(p)

    async def _hand_over(self, leases: LeaseStore, partition: int) -> None:
        """Stop the partition, then free its lease for an engine below its share to take."""
        revision = self.held[partition]
        await self._lose(partition)
        with contextlib.suppress(Exception):  # if this fails, the lease lapses after its TTL instead
            await leases.release(S.lease_key(partition), revision)
        log.info("engine %s handed partition %d over (above its share)", self.ctx.engine_id, partition)

    async def _lose(self, partition: int) -> None:
        self.held.pop(partition, None)
        await self.supervisor.stop(f"partition-{partition}")
