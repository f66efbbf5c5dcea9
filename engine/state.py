"""The state of one workflow run, as persisted in KV `jd_runs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from jetdag.engine.model import WorkflowSpec
from jetdag.engine.stores import packing


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    IGNORED = "ignored"


RUN_DONE = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
TASK_DONE = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED, TaskStatus.IGNORED}
)
TASK_ACTIVE = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})


class _Chunk:
    """`CHUNK` consecutive tasks of a run (in `RunState.tasks` order) as last encoded in its snapshot: `plain`
    their entries (msgpack name + to_dict() of each), `block` that deflated as one piece (packing.deflate);
    None when not built yet or since a field of one of the tasks was assigned."""

    __slots__ = ("block", "plain")

    def __init__(self) -> None:
        self.plain: bytes | None = None
        self.block: bytes | None = None


CHUNK = 512
"""Tasks per chunk of a run's snapshot: a save re-encodes and recompresses the chunks holding a changed task
(about 50 KB of noop tasks, 0.1 ms to compress) and reuses the others."""


@dataclass(slots=True)
class TaskState:
    status: TaskStatus = TaskStatus.WAITING
    attempt: int = 0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    error: str | None = None
    result: Any = None
    due: float | None = None
    _entry: bytes | None = field(default=None, init=False, compare=False, repr=False)
    """This task's entry in the run's packed snapshot (its msgpack name and to_dict()), as RunState.stored()
    last built it; any assignment to a field clears it. Never stored itself."""
    _chunk: _Chunk | None = field(default=None, init=False, compare=False, repr=False)
    """The chunk of the run's snapshot this task's entry is in (set by RunState when it builds its chunks);
    any assignment to a field clears that chunk's encodings too."""

    def __setattr__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)
        if key[0] != "_":
            object.__setattr__(self, "_entry", None)
            chunk = getattr(self, "_chunk", None)  # unset while copy or pickle restore a TaskState
            if chunk is not None:
                chunk.plain = chunk.block = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status.value, "attempt": self.attempt}
        for key in ("queued_at", "started_at", "finished_at", "worker", "error", "result", "due"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskState:
        return cls(**{**d, "status": TaskStatus(d["status"])})


@dataclass(slots=True)
class RunState:
    """One run. `spec` is attached by whoever loads the state; it is stored only when `inline`."""

    run_id: str
    workflow: str
    def_rev: int
    spec: WorkflowSpec | None
    params: dict[str, Any] = field(default_factory=dict)
    status: RunStatus = RunStatus.PENDING
    tasks: dict[str, TaskState] = field(default_factory=dict)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    inline: bool = False
    """True for runs whose spec lives in the snapshot (single tasks from `jd.enqueue`)."""
    seq: int = 0
    """Steps applied so far; names the step records this run emits."""
    logical_time: float = 0.0
    """The time the run's templates render ({yyyy}…); the submission time unless a trigger says otherwise."""
    meta: dict[str, Any] = field(default_factory=dict)
    ready: list[str] = field(default_factory=list)
    """Tasks free to run but held back by max_concurrency, in the order they became free."""
    remaining: int = 0
    """Tasks not yet in a final state; derived on load, kept current by decide."""
    active: int = 0
    """Tasks queued or running; derived on load, kept current by decide."""
    parents_done: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    """Per waiting task, how many of its parents (in `depends_on` order) are known to be done: a cache
    of decide's, never stored, so a join's parents are each looked at once, not once per parent."""
    rerun_of: str | None = None
    """The run this one reruns (`jetdag rerun`), if any."""
    start: list[str] | None = None
    """The tasks a triggered run begins at (RunSubmitted.start); the tasks not downstream of them are skipped."""
    trigger: str | None = None
    """What started the run when no person did (RunSubmitted.trigger)."""
    held: bool = False
    """Waiting for a slot of its workflow's `max_active_runs`: pending until a RunAdmitted starts it."""
    seed: dict[str, Any] | None = None
    """While held: a rerun's kept tasks and their results (RunSubmitted.done), applied when it starts."""
    _chunks: list[tuple[_Chunk, list[tuple[str, TaskState]]]] | None = field(
        default=None, init=False, compare=False, repr=False
    )
    """`tasks` in chunks, with their cached encodings (`stored`); never stored itself."""
    _chunked: int = field(default=0, init=False, compare=False, repr=False)
    """How many tasks `_chunks` holds."""

    @property
    def done(self) -> bool:
        return self.status in RUN_DONE

    def to_dict(self) -> dict[str, Any]:
        head, tail = self._fields()
        return {**head, "tasks": {name: t.to_dict() for name, t in self.tasks.items()}, **tail}

    def packed(self) -> bytes:
        """`msgpack.packb(self.to_dict(), use_bin_type=True)`, the same bytes, built from the encodings cached
        by chunk (`stored`)."""
        head, chunks, tail = self._pieces()
        return b"".join([head, *(chunk.plain or b"" for chunk, _ in chunks), tail])

    def stored(self) -> bytes:
        """The snapshot as KV `jd_runs` stores it (packing.py): `packed()` itself when it is up to
        `packing.COMPRESS_ABOVE` bytes long, `MARKER` + deflate of it above; what `RunStore.save` writes.

        A step rewrites the whole snapshot but touches few tasks, so this costs what changed, not the run's
        size: the tasks are encoded and deflated by chunk of `CHUNK` (`_Chunk`), each kept until a field of one
        of its tasks is assigned, and the stream is the deflated head (the fields before the tasks), each
        chunk's block and the deflated tail, one piece each (packing.deflate). Decompressed it is `packed()`,
        byte for byte; compressed, it is not `packing.compress(packed())` (pieces, not one stream)."""
        head, chunks, tail = self._pieces()
        size = len(head) + len(tail)
        for chunk, _ in chunks:
            size += len(chunk.plain or b"")
        if size <= packing.COMPRESS_ABOVE:
            return b"".join([head, *(chunk.plain or b"" for chunk, _ in chunks), tail])
        parts = [packing.MARKER, packing.deflate(head)]
        for chunk, _ in chunks:
            block = chunk.block
            if block is None:
                block = chunk.block = packing.deflate(chunk.plain or b"")
            parts.append(block)
        parts.append(packing.deflate(tail, final=True))
        return b"".join(parts)

    def _pieces(self) -> tuple[bytes, list[tuple[_Chunk, list[tuple[str, TaskState]]]], bytes]:
        """The packed snapshot in pieces: the head (map header, fields before "tasks", "tasks" and the tasks'
        map header), the chunks of tasks with `plain` built, the tail (the fields after "tasks")."""
        head, tail = self._fields()
        # Each of head and tail packed as a map, less its header: a map of up to 15 entries (head has 12, tail
        # at most 8) has a one-byte header, followed by each key and value packed, as in the snapshot's map.
        packed_head = b"".join(
            [
                _packer.pack_map_header(len(head) + 1 + len(tail)),
                _pack(head)[1:],
                _TASKS_KEY,
                _packer.pack_map_header(len(self.tasks)),
            ]
        )
        chunks = self._chunks
        if chunks is None or self._chunked != len(self.tasks):
            chunks = self._chunks = self._build_chunks()
        for chunk, items in chunks:
            if chunk.plain is None:
                entries = []
                for name, task in items:
                    entry = task._entry
                    if entry is None:
                        entry = _pack(name) + _pack(task.to_dict())
                        task._entry = entry
                    entries.append(entry)
                chunk.plain = b"".join(entries)
        return packed_head, chunks, _pack(tail)[1:]

    def _build_chunks(self) -> list[tuple[_Chunk, list[tuple[str, TaskState]]]]:
        """The tasks in chunks of CHUNK, each task pointed at its own. Built once per RunState: a run's tasks
        are the spec's, fixed when it is created (new_run, from_dict); none is ever added, removed or replaced."""
        items = list(self.tasks.items())
        chunks = []
        for start in range(0, len(items), CHUNK):
            chunk, members = _Chunk(), items[start : start + CHUNK]
            for _, task in members:
                task._chunk = chunk
            chunks.append((chunk, members))
        self._chunked = len(items)
        return chunks

    def _fields(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The snapshot's fields before "tasks" and after it, in to_dict's order."""
        head: dict[str, Any] = {
            "v": 1,
            "run_id": self.run_id,
            "workflow": self.workflow,
            "def_rev": self.def_rev,
            "params": self.params,
            "status": self.status.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "seq": self.seq,
            "logical_time": self.logical_time,
        }
        tail: dict[str, Any] = {}
        if self.meta:
            tail["meta"] = self.meta
        if self.ready:
            tail["ready"] = self.ready
        if self.rerun_of is not None:
            tail["rerun_of"] = self.rerun_of
        if self.start:
            tail["start"] = self.start
        if self.trigger is not None:
            tail["trigger"] = self.trigger
        if self.held:
            tail["held"] = True
        if self.seed is not None:
            tail["seed"] = self.seed
        if self.inline and self.spec is not None:
            tail["spec"] = self.spec.to_dict()
        return head, tail

    @classmethod
    def from_dict(cls, d: dict[str, Any], spec: WorkflowSpec | None = None) -> RunState:
        inline = "spec" in d
        if inline:
            spec = WorkflowSpec.from_dict(d["spec"])
        tasks = {name: TaskState.from_dict(t) for name, t in d["tasks"].items()}
        return cls(
            run_id=d["run_id"],
            workflow=d["workflow"],
            def_rev=d["def_rev"],
            spec=spec,
            params=d["params"],
            status=RunStatus(d["status"]),
            tasks=tasks,
            created_at=d["created_at"],
            started_at=d["started_at"],
            finished_at=d["finished_at"],
            error=d["error"],
            inline=inline,
            seq=d["seq"],
            logical_time=d.get("logical_time", d["created_at"]),
            meta=d.get("meta", {}),
            ready=d.get("ready", []),
            remaining=sum(1 for t in tasks.values() if t.status not in TASK_DONE),
            active=sum(1 for t in tasks.values() if t.status in TASK_ACTIVE),
            rerun_of=d.get("rerun_of"),
            start=d.get("start"),
            trigger=d.get("trigger"),
            held=bool(d.get("held", False)),
            seed=d.get("seed"),
        )


_packer = msgpack.Packer(use_bin_type=True)
_pack = _packer.pack
"""`msgpack.packb(obj, use_bin_type=True)`, without making a Packer each time (a third of the time for a task's
entry). One Packer for the module: it starts afresh on each call (autoreset), even after an error."""


_TASKS_KEY = _pack("tasks")


def new_run(
    run_id: str,
    workflow: str,
    def_rev: int,
    spec: WorkflowSpec | None,
    params: dict[str, Any],
    created_at: float,
    inline: bool = False,
    logical_time: float | None = None,
    meta: dict[str, Any] | None = None,
) -> RunState:
    """A pending run with every task waiting; the workflow's param defaults under the given params."""
    tasks = {t.name: TaskState() for t in spec.tasks} if spec else {}
    merged = {**(spec.params if spec else {}), **params}
    return RunState(
        run_id=run_id,
        workflow=workflow,
        def_rev=def_rev,
        spec=spec,
        params=merged,
        tasks=tasks,
        created_at=created_at,
        inline=inline,
        logical_time=created_at if logical_time is None else logical_time,
        meta=dict(meta or {}),
        remaining=len(tasks),
    )
