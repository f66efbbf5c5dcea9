"""What a run reacts to (events) and what its state machine asks for (commands).

Events arrive on `jd.evt.<p>.<run>`; commands are carried out by the run actor.
Every event is idempotent by (run, task, attempt, kind): applying it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class RunSubmitted:
    kind: ClassVar[str] = "run.submitted"
    run_id: str
    workflow: str
    def_rev: int
    params: dict[str, Any]
    ts: float
    spec: dict[str, Any] | None = None
    """An inline workflow (a single enqueued task); None means jd_defs[workflow] at def_rev."""
    not_before: float | None = None
    logical_time: float | None = None
    """The time templates ({yyyy}…) render: a trigger's firing time plus offset, or a backfill's date."""
    meta: dict[str, Any] | None = None
    """Trigger or batch metadata for `{meta:key}` (the file that landed, a batch row)."""
    error: str | None = None
    """Set when the submission cannot start (unknown workflow): the run is recorded as failed."""
    done: dict[str, Any] | None = None
    """A rerun's tasks that are not run again: task -> the original run's result (pre-marked succeeded)."""
    rerun_of: str | None = None
    """The run this one reruns (`jetdag rerun`)."""
    start: list[str] | None = None
    """The tasks the run begins at (a trigger on a flowlord phase); the others are skipped. None: the roots."""
    trigger: str | None = None
    """What started it, when not a person: a trigger's key ("cron", "files:load", "message") or "backfill"."""


@dataclass(frozen=True, slots=True)
class RunAdmitted:
    """A run held back by its workflow's `max_active_runs` got a slot: it starts now."""

    kind: ClassVar[str] = "run.admitted"
    run_id: str
    ts: float


@dataclass(frozen=True, slots=True)
class RunHoldCheck:
    """A timer of a run held back by `max_active_runs`: at `due` it asks for a slot again (in case the wake-up
    of the run that freed one was lost)."""

    kind: ClassVar[str] = "run.hold"
    run_id: str
    ts: float
    due: float


@dataclass(frozen=True, slots=True)
class TaskStarted:
    kind: ClassVar[str] = "task.started"
    run_id: str
    task: str
    attempt: int
    ts: float
    worker: str = ""


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    kind: ClassVar[str] = "task.succeeded"
    run_id: str
    task: str
    attempt: int
    ts: float
    worker: str = ""
    result: Any = None
    started: float | None = None
    """When the attempt began, for a result that comes without a task.started (see actors/worker.py)."""


@dataclass(frozen=True, slots=True)
class TaskFailed:
    kind: ClassVar[str] = "task.failed"
    run_id: str
    task: str
    attempt: int
    ts: float
    error: str
    worker: str = ""
    retryable: bool = True
    retry_delay: float | None = None
    """The handler asked to be retried after this many seconds (raise Retry(delay=…))."""
    details: dict[str, Any] | None = None
    started: float | None = None
    """When the attempt began, for a result that comes without a task.started (see actors/worker.py)."""


@dataclass(frozen=True, slots=True)
class TaskDue:
    """A timer the run set for itself: attempt `attempt` of `task` may be dispatched at `due`."""

    kind: ClassVar[str] = "task.due"
    run_id: str
    task: str
    attempt: int
    ts: float
    due: float


@dataclass(frozen=True, slots=True)
class RunDeadline:
    """The run's whole-run timeout (`config.timeout`) falls at `due`."""

    kind: ClassVar[str] = "run.deadline"
    run_id: str
    ts: float
    due: float


@dataclass(frozen=True, slots=True)
class RunCancel:
    """An operator cancels the run: every task not yet final is cancelled, running handlers are interrupted."""

    kind: ClassVar[str] = "run.cancel"
    run_id: str
    ts: float
    reason: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class RunPause:
    """An operator pauses the run: nothing new is dispatched; what runs finishes."""

    kind: ClassVar[str] = "run.pause"
    run_id: str
    ts: float
    reason: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class RunResume:
    """An operator resumes a paused run: everything that became ready meanwhile is dispatched."""

    kind: ClassVar[str] = "run.resume"
    run_id: str
    ts: float
    by: str = ""


@dataclass(frozen=True, slots=True)
class TaskIgnore:
    """An operator marks a failed (or retrying) task `ignored`: it counts as a success for its children."""

    kind: ClassVar[str] = "task.ignore"
    run_id: str
    task: str
    ts: float
    reason: str = ""
    by: str = ""


Event = (
    RunSubmitted
    | RunAdmitted
    | RunHoldCheck
    | TaskStarted
    | TaskSucceeded
    | TaskFailed
    | TaskDue
    | RunDeadline
    | RunCancel
    | RunPause
    | RunResume
    | TaskIgnore
)
EVENT_TYPES: dict[str, type[Event]] = {
    t.kind: t
    for t in (
        RunSubmitted,
        RunAdmitted,
        RunHoldCheck,
        TaskStarted,
        TaskSucceeded,
        TaskFailed,
        TaskDue,
        RunDeadline,
        RunCancel,
        RunPause,
        RunResume,
        TaskIgnore,
    )
}


@dataclass(frozen=True, slots=True)
class DispatchTask:
    """Publish attempt `attempt` of `task` to its queue."""

    task: str
    attempt: int
    queue: str
    priority: int
    handler: str
    payload: Any
    timeout: float | None
    info: str | None = None
    """The task's rendered template."""
    job: str | None = None
    requires: Mapping[str, str] | None = None
    """Labels the worker must have: they route the task (`subjects.task_subject`)."""


@dataclass(frozen=True, slots=True)
class ScheduleDue:
    """Publish a TaskDue for the run to itself; it is redelivered until `due`."""

    task: str
    attempt: int
    due: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The last attempt of `task` failed: record it in JD_DLQ with its error."""

    task: str
    attempt: int
    queue: str
    error: str


@dataclass(frozen=True, slots=True)
class ScheduleDeadline:
    """Publish a RunDeadline for the run to itself; it is redelivered until `due`."""

    due: float


@dataclass(frozen=True, slots=True)
class InterruptTask:
    """Ask the workers (core NATS, best effort) to stop the handler running attempt `attempt` of `task`."""

    task: str
    attempt: int


@dataclass(frozen=True, slots=True)
class RequestSlot:
    """Ask the workflow's gate (`max_active_runs`) for a slot; the gate wakes the run with a RunAdmitted.

    `recheck`: also free the slots of active runs that are over or gone (a timer's request, not the first)."""

    recheck: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """The run is over: give its slot (or its place in the line) back and wake the runs next in line."""


@dataclass(frozen=True, slots=True)
class ScheduleHoldCheck:
    """Publish a RunHoldCheck for the run to itself; it is redelivered until `due`."""

    due: float


Command = (
    DispatchTask
    | ScheduleDue
    | DeadLetter
    | ScheduleDeadline
    | InterruptTask
    | RequestSlot
    | ReleaseSlot
    | ScheduleHoldCheck
)


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a task's (or, with task None, the run's) status, for the step record."""

    task: str | None
    attempt: int
    status: str
    ts: float
    error: str | None = None


@dataclass(slots=True)
class Decision:
    """What decide() concluded from one event."""

    commands: list[Command] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    defer_until: float | None = None
    """The event came before its cause (or its time): deliver it again at this time."""
    reason: str | None = None
    """Why the event was deferred or ignored (for logs and tests)."""

    @property
    def changed(self) -> bool:
        return bool(self.transitions)
