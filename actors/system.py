"""System: the roles one process plays (engine, worker, auditor) on one NATS connection, started and stopped
in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from jetdag.engine.nats.setup import Topology, close, connect, ensure
from jetdag.engine.stores.defs import DefStore
from jetdag.engine.stores.gate import GateStore
from jetdag.engine.stores.runs import RunStore
from jetdag.engine.subjects import DEFAULT_PARTITIONS
from jetdag.engine.workers import HEARTBEAT

from .auditor import Auditor
from .context import EngineContext
from .engine import Engine
from .supervisor import cancel
from .worker import Worker

log = logging.getLogger(__name__)

ROLE_GRACE = 10.0
"""Seconds a cancelled role has to finish its cleanup before it is cancelled again (see supervisor.cancel)."""


class System:
    """`async with System(url, ...)`: ready when every role is; leaving drains workers, then stops engines."""

    def __init__(
        self,
        url: str,
        *,
        engine: bool = True,
        queues: Sequence[str] = ("default",),
        concurrency: int = 32,
        partitions: int = DEFAULT_PARTITIONS,
        engine_id: str | None = None,
        topology: Topology | None = None,
        idle_timeout: float = 30.0,
        drain_timeout: float = 30.0,
        audit: Path | None = None,
        retention_days: float = 90.0,
        audit_export_to: Path | None = None,
        heartbeat: float = HEARTBEAT,
        worker_id: str | None = None,
        labels: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        file_settle: float = 1.0,
    ) -> None:
        self.url, self.with_engine, self.queues = url, engine, list(queues)
        self.concurrency, self.partitions, self.topology = concurrency, partitions, topology or Topology()
        self.engine_id = engine_id or f"{socket.gethostname()}-{os.getpid()}"
        self.idle_timeout, self.drain_timeout = idle_timeout, drain_timeout
        self.heartbeat = heartbeat
        self.worker_id = worker_id
        self.labels = labels
        self.clock = clock
        """What the scheduler takes for now (tests move it; everything else keeps real time)."""
        self.file_settle = file_settle
        """Seconds a file's size and mtime must hold still before a file trigger takes it."""
        self.nc: NATS | None = None
        self.engine: Engine | None = None
        self.worker: Worker | None = None
        self.audit_path, self.retention_days, self.audit_export_to = audit, retention_days, audit_export_to
        self.auditor: Auditor | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.nc = await connect(self.url, f"jetdag {self.engine_id}")
        js = self.nc.jetstream()
        await ensure(js, self.topology)
        if self.with_engine:
            runs = await RunStore.open(self.nc, js)
            ctx = EngineContext(
                nc=self.nc, js=js, runs=runs, publisher=runs.publisher, defs=await DefStore.open(js),
                gate=await GateStore.open(js), engine_id=self.engine_id, partitions=self.partitions,
                idle_timeout=self.idle_timeout,
            )  # fmt: skip
            self.engine = Engine(
                ctx, self.url, lease_ttl=self.topology.lease_ttl, replicas=self.topology.replicas, clock=self.clock,
                file_settle=self.file_settle,
            )  # fmt: skip
            self._spawn(self.engine.run(), "engine")
        if self.audit_path is not None:
            self.auditor = Auditor(
                self.nc, js, self.audit_path, retention_days=self.retention_days,
                queries=self.audit_path.parent / "queries.toml", export_to=self.audit_export_to,
            )  # fmt: skip
            self._spawn(self.auditor.run(), "auditor")
        if self.queues:
            self.worker = Worker(
                self.nc, js, self.queues, concurrency=self.concurrency, drain_timeout=self.drain_timeout,
                heartbeat=self.heartbeat, worker_id=self.worker_id, labels=self.labels,
            )  # fmt: skip
            self._spawn(self.worker.run(), "worker")
        waits = [role.ready.wait() for role in (self.engine, self.auditor) if role is not None]
        if waits:
            ready: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*waits))
            done, _ = await asyncio.wait([ready, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                for task in done:
                    task.result()  # a role that died while starting: raise its error

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_report)
        self._tasks.append(task)

    async def wait(self) -> None:
        """Until a role ends (it only does on an error, which is raised)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def stop(self) -> None:
        if self.worker:
            self.worker.stop()
        for task in reversed(self._tasks):
            if task.get_name() == "worker":
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
            else:
                # A role cleans up when cancelled (an engine stops its partitions, then hands its leases
                # back within 2 s): cancelling it again before then would cut that short.
                await cancel(task, owner="system", grace=ROLE_GRACE)  # a failed role was reported (_report)
        if self.nc is not None:
            await close(self.nc)

    async def __aenter__(self) -> System:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _report(task: asyncio.Task[None]) -> None:
    """A role that ends on its own has failed: say so at once, whoever awaits it later."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the %s stopped: %r", task.get_name(), task.exception(), exc_info=task.exception())
