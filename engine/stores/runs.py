"""Run snapshots in KV `jd_runs`: key = run id, written with compare-and-set on the revision."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.nats.publisher import Publisher
from jetdag.engine.stores import cas, packing
from jetdag.engine.stores.keys import keys

log = logging.getLogger(__name__)


class RunStore:
    """load / save / watch run snapshots; nothing above this module touches `jd_runs` directly."""

    def __init__(self, kv: KeyValue, publisher: Publisher) -> None:
        self.kv, self.publisher = kv, publisher

    @classmethod
    async def open(cls, nc: NATS, js: JetStreamContext) -> RunStore:
        return cls(await js.key_value(S.RUNS_KV), Publisher(nc))

    async def load(self, run_id: str) -> tuple[dict[str, Any] | None, int]:
        """The snapshot and its revision; (None, 0) when the run does not exist."""
        try:
            entry = await self.kv.get(run_id)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, 0
        return packing.decode(entry.value), entry.revision or 0

    async def save(self, run_id: str, snapshot: dict[str, Any] | bytes, revision: int) -> int:
        """Write if the stored revision is still `revision` (0: must not exist); StaleOwner otherwise.

        `snapshot` is the dict (stored compressed when large, packing.py) or the value to store as it is,
        `RunState.stored()`. ValueTooLarge when that is over max_payload.
        """
        data = snapshot if isinstance(snapshot, bytes) else packing.encode(snapshot)
        try:
            future = await cas.send(self.publisher, S.RUNS_KV, run_id, data, revision)
        except MaxPayloadError:
            raise packing.too_large(f"the snapshot of run {run_id}", data, self.kv) from None
        return await cas.written(future, S.RUNS_KV, run_id, revision)

    async def ids(self) -> list[str]:
        """Every run id, oldest first (run ids sort by creation time)."""
        return sorted(await keys(self.publisher.nc, S.RUNS_KV))

    async def watch(self, run_id: str, recheck: float = 2.0) -> AsyncIterator[dict[str, Any]]:
        """The current snapshot (once it exists) and then each new one.

        After `recheck` quiet seconds the key is read directly too: a KV watcher is an ephemeral
        consumer, and one lost with a stream leader that moved takes nats-py two idle heartbeats
        (10 s) to notice. Each revision is yielded once, whichever way it arrived.
        """
        watcher = await self.kv.watch(run_id)
        seen = 0
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=recheck)
                except TimeoutError:
                    try:
                        snapshot, revision = await self.load(run_id)
                    except NatsError as exc:  # a server failing over: the watcher may still deliver
                        log.debug("run %s: recheck failed: %s", run_id, exc)
                        continue
                    if snapshot is not None and revision > seen:
                        seen = revision
                        yield snapshot
                    continue
                if entry is not None and entry.value and (entry.revision or 0) > seen:
                    seen = entry.revision or 0
                    yield packing.decode(entry.value)
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await watcher.stop()
