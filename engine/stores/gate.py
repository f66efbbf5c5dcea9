"""A workflow's `max_active_runs` gate in KV `jd_schedules` (key `gate.<workflow>`): the runs that hold a slot
and the line of runs waiting for one, first come first served.

Every run of a gated workflow asks here before it starts (`request`) and gives its slot back when it ends
(`release`); both are compare-and-set loops, so runs on any engine share one count. Each call answers the
runs it admitted: the caller wakes each with a `run.admitted` event. A wake-up lost in a crash is made up by
the waiting run's own timer, which asks again (run.hold); asking twice is harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgpack
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S

_TRIES = 50
"""Compare-and-set attempts before giving up (the step then fails and is redelivered): runs of one workflow
ending together contend for the key."""


@dataclass(slots=True)
class Gate:
    active: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    def admit(self, limit: int) -> list[str]:
        """Move runs from the head of the line into free slots; those moved."""
        moved: list[str] = []
        while self.waiting and len(self.active) < limit:
            run = self.waiting.pop(0)
            self.active.append(run)
            moved.append(run)
        return moved


class GateStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> GateStore:
        return cls(await js.key_value(S.SCHEDULES_KV))

    async def request(
        self, workflow: str, run_id: str, limit: int, over: Callable[[list[str]], Awaitable[set[str]]] | None = None
    ) -> list[str]:
        """Put the run in line (once) and admit what fits; the runs admitted. A run already holding a slot is
        answered as admitted again (its wake-up may have been lost). `over`, given the active runs, names
        those that are over or gone: their slots are freed first (a release lost for good must not block
        the workflow forever)."""

        async def change(gate: Gate) -> list[str]:
            if run_id in gate.active:
                return [run_id]
            if over is not None and gate.active:
                done = await over(list(gate.active))
                gate.active = [r for r in gate.active if r not in done]
            if run_id not in gate.waiting:
                gate.waiting.append(run_id)
            return gate.admit(limit)

        return await self._change(workflow, change)

    async def release(self, workflow: str, run_id: str, limit: int) -> list[str]:
        """Take the run out (slot or line); the runs this admitted."""

        async def change(gate: Gate) -> list[str]:
            gate.active = [r for r in gate.active if r != run_id]
            gate.waiting = [r for r in gate.waiting if r != run_id]
            return gate.admit(limit)

        return await self._change(workflow, change)

    async def read(self, workflow: str) -> Gate:
        return (await self._read(workflow))[0]

    async def _change(self, workflow: str, change: Callable[[Gate], Awaitable[list[str]]]) -> list[str]:
        key = S.gate_key(workflow)
        for _ in range(_TRIES):
            gate, revision = await self._read(workflow)
            before = (list(gate.active), list(gate.waiting))
            admitted = await change(gate)
            if (gate.active, gate.waiting) == before:
                return admitted
            data = msgpack.packb({"v": 1, "active": gate.active, "waiting": gate.waiting}, use_bin_type=True)
            try:
                if revision:
                    await self.kv.update(key, data, last=revision)
                else:
                    await self.kv.create(key, data)
                return admitted
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"{S.SCHEDULES_KV}/{key}: still changing after {_TRIES} tries")

    async def _read(self, workflow: str) -> tuple[Gate, int]:
        try:
            entry = await self.kv.get(S.gate_key(workflow))
        except KeyNotFoundError:
            return Gate(), 0
        if not entry.value:
            return Gate(), entry.revision or 0
        d = msgpack.unpackb(entry.value, raw=False)
        return Gate(list(d.get("active", [])), list(d.get("waiting", []))), entry.revision or 0
