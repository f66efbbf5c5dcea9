"""Engine: holds partition leases and runs a PartitionOwner for each partition it holds, plus the inbox.

A lease is a key in `jd_leases` (bucket TTL = lease TTL), renewed by compare-and-set. An engine
that cannot renew a lease in time stops its partition before another engine can take it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from jetdag.engine import subjects as S
from jetdag.engine.errors import StaleOwner
from jetdag.engine.stores.leases import LeaseStore

from .context import EngineContext
from .inbox import Inbox
from .partition import PartitionOwner
from .supervisor import Supervisor

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, ctx: EngineContext, *, lease_ttl: float = 6.0) -> None:
        self.ctx, self.lease_ttl = ctx, lease_ttl
        self.supervisor = Supervisor("engine")
        self.held: dict[int, int] = {}  # partition -> lease revision (the fencing token)
        self._renewed: dict[int, float] = {}
        self.ready = asyncio.Event()
        """Set once this engine has looked at every partition (and holds the free ones)."""

    async def run(self) -> None:
        leases = await LeaseStore.open(self.ctx.js)
        self.supervisor.start("inbox", Inbox(self.ctx).run, permanent=True)
        try:
            while True:
                await self._tend(leases)
                self.ready.set()
                await asyncio.sleep(self.lease_ttl / 3)
        finally:
            await self.supervisor.stop()
            for p, revision in list(self.held.items()):  # hand over at once instead of after the TTL
                with contextlib.suppress(Exception):
                    await leases.release(S.lease_key(p), revision)
            self.held.clear()

    async def _tend(self, leases: LeaseStore) -> None:
        for p in range(self.ctx.partitions):
            key = S.lease_key(p)
            try:
                if p in self.held:
                    self.held[p] = await leases.renew(key, self.ctx.engine_id, self.held[p])
                    self._renewed[p] = time.monotonic()
                elif (revision := await leases.acquire(key, self.ctx.engine_id)) is not None:
                    self.held[p], self._renewed[p] = revision, time.monotonic()
                    self.supervisor.start(f"partition-{p}", PartitionOwner(self.ctx, p).run, permanent=True)
                    log.info("engine %s owns partition %d", self.ctx.engine_id, p)
            except StaleOwner:
                log.warning("engine %s lost partition %d to another engine", self.ctx.engine_id, p)
                await self._lose(p)
            except Exception as exc:
                log.warning("lease %s: %s", key, exc)
                # Unable to prove ownership: stop writing before the lease can lapse and pass on.
                if p in self.held and time.monotonic() - self._renewed[p] > self.lease_ttl * 0.7:
                    await self._lose(p)

    async def _lose(self, partition: int) -> None:
        self.held.pop(partition, None)
        await self.supervisor.stop(f"partition-{partition}")
