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
import zlib
from collections.abc import Callable

from jetdag.engine import subjects as S
from jetdag.engine.balance import share
from jetdag.engine.errors import StaleOwner
from jetdag.engine.nats.setup import farewell
from jetdag.engine.stores.leases import LeaseStore

from .context import EngineContext
from .inbox import Inbox
from .partition import PartitionOwner
from .reaper import Reaper
from .supervisor import Supervisor
from .triggers import Triggers

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        ctx: EngineContext,
        url: str,
        *,
        lease_ttl: float = 6.0,
        replicas: int = 1,
        clock: Callable[[], float] = time.time,
        file_settle: float = 1.0,
    ) -> None:
        self.ctx, self.url, self.lease_ttl, self.replicas, self.clock = ctx, url, lease_ttl, replicas, clock
        self.file_settle = file_settle
        self.supervisor = Supervisor("engine")
        self.held: dict[int, int] = {}  # partition -> lease revision (the fencing token)
        self.roster: tuple[str, ...] = ()
        """The live engines, as the last look at `jd_leases` found them."""
        self._renewed: dict[int, float] = {}
        self.reaper = Reaper(ctx.nc, ctx.js, ctx.engine_id)
        self.ready = asyncio.Event()
        """Set once this engine has looked at every partition (and taken its share of the free ones)."""

    async def run(self) -> None:
        leases = await LeaseStore.open(self.ctx.js)
        self.supervisor.start("inbox", Inbox(self.ctx).run, permanent=True)
        # Every engine reaps dead workers; reaping twice is harmless (see reaper.py).
        self.supervisor.start("reaper", self.reaper.run, permanent=True)
        triggers = self._start_triggers()
        try:
            while True:
                await self._tend(leases)
                self.ready.set()
                await asyncio.sleep(self.lease_ttl / 3)
        finally:
            await triggers.stop()
            await self.supervisor.stop()
            held, self.held = self.held, {}
            # Hand the partitions over at once instead of after the TTL.
            releases = [leases.release(S.lease_key(p), revision) for p, revision in held.items()]
            await farewell(*releases, leases.withdraw(self.ctx.engine_id))

    def rank(self, workflow: str) -> int:
        """Who fires the workflow's triggers: 0, this engine owns the workflow's partition and fires them on time;
        n > 0, it backs the owner up, n-th in an order of the live engines drawn per partition (so the backups of
        one partition do not all step in at once). Read from the triggers' thread."""
        partition = S.partition_of(workflow, self.ctx.partitions)
        if partition in self.held:
            return 0
        order = sorted(self.roster, key=lambda engine: zlib.crc32(f"{partition}:{engine}".encode()))
        return 1 + (order.index(self.ctx.engine_id) if self.ctx.engine_id in order else len(order))

    def _start_triggers(self) -> Triggers:
        """Triggers run on every engine (each fires what its partitions own and backs the others up), on a thread of
        their own (actors/triggers.py)."""
        # tuple(self.held) from the triggers' thread: copied in one step under the interpreter lock.
        triggers = Triggers(self.url, self.ctx, self.rank, lambda: tuple(self.held), replicas=self.replicas,
                            clock=self.clock, file_settle=self.file_settle)  # fmt: skip
        triggers.start()
        return triggers

    async def _tend(self, leases: LeaseStore) -> None:
        me = self.ctx.engine_id
        await self._renew(leases)
        target = len(self.held)  # when the roster cannot be read: keep what is held, take nothing new
        try:
            await leases.announce(me)
            engines = await leases.engines()
            self.roster = tuple(sorted(engines))
            target = share(self.ctx.partitions, engines, me)
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
