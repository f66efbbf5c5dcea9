"""The state of one workflow run, as persisted in KV `jd_runs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from jetdag.engine.model import WorkflowSpec


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
    """This task's entry in the run's packed snapshot (its msgpack name and to_dict()), as RunState.packed()
    last built it; any assignment to a field clears it. Never stored itself."""

    def __setattr__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)
        if key != "_entry":
            object.__setattr__(self, "_entry", None)

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

    @property
    def done(self) -> bool:
        return self.status in RUN_DONE

    def to_dict(self) -> dict[str, Any]:
        head, tail = self._fields()
        return {**head, "tasks": {name: t.to_dict() for name, t in self.tasks.items()}, **tail}

    def packed(self) -> bytes:
        """`msgpack.packb(self.to_dict(), use_bin_type=True)`, the same bytes, built without re-encoding the
        tasks that did not change since the last call: a step rewrites the whole snapshot, but touches few
        tasks (each TaskState keeps its own encoding until a field of it is assigned)."""
        head, tail = self._fields()
        parts = [_packer.pack_map_header(len(head) + 1 + len(tail))]
        for key, value in head.items():
            parts += (_pack(key), _pack(value))
        parts += (_TASKS_KEY, _packer.pack_map_header(len(self.tasks)))
        for name, task in self.tasks.items():
            entry = task._entry
            if entry is None:
                entry = _pack(name) + _pack(task.to_dict())
                task._entry = entry
            parts.append(entry)
        for key, value in tail.items():
            parts += (_pack(key), _pack(value))
        return b"".join(parts)

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
        )


_packer = msgpack.Packer(use_bin_type=True)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


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
