"""Schedule switches in KV `jd_schedules`: key = workflow name, value = `ScheduleState` as msgpack.

Written with compare-and-set: the switch (people, the API) and `last_fire` (the scheduler) share
the key, and neither may undo the other.
"""

from __future__ import annotations

import time

import msgpack
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.schedules import ScheduleState

_TRIES = 10


class ScheduleStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> ScheduleStore:
        return cls(await js.key_value(S.SCHEDULES_KV))

    async def get(self, workflow: str) -> ScheduleState:
        return (await self._read(workflow))[0]

    async def set_enabled(self, workflow: str, enabled: bool | None, by: str = "") -> ScheduleState:
        """Switch the schedule on or off (None: the other way round); the state now stored."""
        for _ in range(_TRIES):
            state, revision = await self._read(workflow)
            new = ScheduleState(
                enabled=(not state.enabled) if enabled is None else enabled,
                last_fire=state.last_fire,
                changed_by=by,
                changed_at=time.time(),
            )
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

    async def _read(self, workflow: str) -> tuple[ScheduleState, int]:
        try:
            entry = await self.kv.get(workflow)
        except KeyNotFoundError:
            return ScheduleState(), 0
        if not entry.value:  # deleted: as if never switched
            return ScheduleState(), entry.revision or 0
        return ScheduleState.from_dict(msgpack.unpackb(entry.value, raw=False)), entry.revision or 0
