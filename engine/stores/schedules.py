"""Schedules in KV `jd_schedules`: key = workflow name, value = `ScheduleState` as msgpack.

Written with compare-and-set: the switch (people, the API) and the scheduler's progress share the
key, and neither may undo the other. The bucket also holds each workflow's `max_active_runs` gate
under `gate.<workflow>` (engine/stores/gate.py): two tokens, so a watch of `*` passes it by.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import msgpack
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.nats.publisher import Publisher
from jetdag.engine.schedules import ScheduleState
from jetdag.engine.stores import cas

_TRIES = 10


class ScheduleStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> ScheduleStore:
        return cls(await js.key_value(S.SCHEDULES_KV))

    async def get(self, workflow: str) -> ScheduleState:
        return (await self.read(workflow))[0]

    async def set_enabled(self, workflow: str, enabled: bool | None, by: str = "") -> ScheduleState:
        """Switch the schedule on or off (None: the other way round); the state now stored. Setting what
        already holds changes nothing: a switch-on marks the moment from which ticks fire again."""
        for _ in range(_TRIES):
            state, revision = await self.read(workflow)
            want = (not state.enabled) if enabled is None else enabled
            if want == state.enabled and revision:
                return state
            new = ScheduleState(enabled=want, changed_by=by, changed_at=time.time(), triggers=state.triggers)
            data = msgpack.packb(new.to_dict(), use_bin_type=True)
            try:
                if revision:
                    await self.kv.update(workflow, data, last=revision)
                else:
                    await self.kv.create(workflow, data)
                return new
            except KeyWrongLastSequenceError:
                continue  # the scheduler fired meanwhile: read again
        raise RuntimeError(f"{S.SCHEDULES_KV}/{workflow}: still changing after {_TRIES} tries")

    async def write(self, publisher: Publisher, workflow: str, state: ScheduleState, revision: int) -> int:
        """Store `state` if the key is still at `revision` (0: absent); its new revision, StaleOwner otherwise.

        A publish to the bucket's subject, as run snapshots are written: the scheduler records thousands
        of fires at once, and these pipeline where `kv.update` waits for each."""
        data = msgpack.packb(state.to_dict(), use_bin_type=True)
        return await cas.put(publisher, S.SCHEDULES_KV, workflow, data, revision)

    async def read(self, workflow: str) -> tuple[ScheduleState, int]:
        """The state and its revision (0: never written)."""
        try:
            entry = await self.kv.get(workflow)
        except KeyNotFoundError:
            return ScheduleState(), 0
        return decode(entry.value), entry.revision or 0

    async def watch(
        self, on_caught_up: Callable[[], None] | None = None, known: Callable[[str], int] | None = None
    ) -> AsyncIterator[tuple[str, ScheduleState, int]]:
        """Every workflow's state as stored now, then each change: (workflow, state, revision); `on_caught_up` is
        called once what was stored has come; `known(workflow)`, the revision the caller has, skips what is not newer.
        A deleted key comes as a fresh state. Ends when the watch is
        stopped (the caller starts a new one)."""
        watcher = await self.kv.watch("*")
        try:
            while True:
                entry = await watcher.updates(timeout=None)  # None: as long as it takes
                if entry is None:  # the end of what was stored: changes follow
                    if on_caught_up is not None:
                        on_caught_up()
                    continue
                if not isinstance(entry, KeyValue.Entry):
                    return  # stopped
                if known is not None and (entry.revision or 0) <= known(entry.key):
                    continue  # the caller has it (its own write, say): not decoded for nothing
                yield entry.key, decode(entry.value), entry.revision or 0
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await watcher.stop()


def decode(value: bytes | None) -> ScheduleState:
    """A stored value; empty (a deleted key) is as if never switched."""
    if not value:
        return ScheduleState()
    return ScheduleState.from_dict(msgpack.unpackb(value, raw=False))
