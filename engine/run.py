"""The run state machine: decide(state, event, now) -> Decision. Pure; never raises.

decide() owns the state it is given and updates it in place (a 100k-task run is not copied per
event); callers that need the old state keep a copy. Time comes in as `now`, randomness is
derived from the run, task and attempt, so the same inputs always give the same outputs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from jetdag.engine import templates
from jetdag.engine.durations import format_duration
from jetdag.engine.events import (
    DeadLetter,
    Decision,
    DispatchTask,
    Event,
    RunDeadline,
    RunSubmitted,
    ScheduleDeadline,
    ScheduleDue,
    TaskDue,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    Transition,
)
from jetdag.engine.retry import next_delay, stable_random
from jetdag.engine.rules import Verdict, evaluate
from jetdag.engine.state import TASK_ACTIVE, TASK_DONE, RunState, RunStatus, TaskState, TaskStatus

log = logging.getLogger(__name__)

EARLY_RETRY = 0.5
"""Seconds before an event that arrived ahead of its cause is looked at again."""


def decide(state: RunState | None, event: Event, now: float) -> Decision:
    """Apply `event` to `state` (in place) and say what must happen next."""
    if state is None:
        return Decision(defer_until=now + EARLY_RETRY, reason="the run does not exist yet")
    decision = Decision()
    try:
        match event:
            case RunSubmitted():
                _on_submitted(state, event, now, decision)
            case TaskStarted():
                _on_started(state, event, now, decision)
            case TaskSucceeded():
                _on_succeeded(state, event, now, decision)
            case TaskFailed():
                _on_failed(state, event, now, decision)
            case TaskDue():
                _on_due(state, event, now, decision)
            case RunDeadline():
                _on_deadline(state, event, now, decision)
    except Exception as exc:  # a bug here must fail one run, not the engine
        log.exception("decide failed for run %s on %s", state.run_id, event.kind)
        decision = Decision()
        _finish(state, RunStatus.FAILED, now, decision, error=f"internal error: {type(exc).__name__}: {exc}")
    if decision.changed:
        state.seq += 1
    return decision


def _on_submitted(state: RunState, ev: RunSubmitted, now: float, d: Decision) -> None:
    if state.status is not RunStatus.PENDING:
        d.reason = "duplicate submission"
        return
    if ev.not_before is not None and ev.not_before > now:
        d.defer_until, d.reason = ev.not_before, "delayed submission"
        return
    if ev.error or state.spec is None:
        _finish(state, RunStatus.FAILED, now, d, error=ev.error or "the run has no workflow definition")
        return
    state.status, state.started_at = RunStatus.RUNNING, now
    d.transitions.append(Transition(None, 0, RunStatus.RUNNING.value, now))
    if not state.tasks:
        _finish(state, RunStatus.SUCCEEDED, now, d)
        return
    if state.spec.timeout is not None:
        d.commands.append(ScheduleDeadline(now + state.spec.timeout))
    for name in state.spec.roots:
        _dispatch(state, name, now, d)


def _on_started(state: RunState, ev: TaskStarted, now: float, d: Decision) -> None:
    task = _task_for(state, ev, d)
    if task is None or task.attempt != ev.attempt or task.status is not TaskStatus.QUEUED:
        return
    task.status, task.started_at, task.worker = TaskStatus.RUNNING, ev.ts, ev.worker
    d.transitions.append(Transition(ev.task, ev.attempt, TaskStatus.RUNNING.value, ev.ts))


def _on_succeeded(state: RunState, ev: TaskSucceeded, now: float, d: Decision) -> None:
    task = _task_for(state, ev, d)
    if task is None or task.attempt != ev.attempt or task.status not in TASK_ACTIVE:
        return
    task.status, task.finished_at, task.result, task.error = TaskStatus.SUCCEEDED, ev.ts, ev.result, None
    task.worker = ev.worker or task.worker
    state.active -= 1
    d.transitions.append(Transition(ev.task, ev.attempt, TaskStatus.SUCCEEDED.value, ev.ts))
    _settled(state, ev.task, now, d)


def _on_failed(state: RunState, ev: TaskFailed, now: float, d: Decision) -> None:
    task = _task_for(state, ev, d)
    if task is None or task.attempt != ev.attempt or task.status not in TASK_ACTIVE:
        return
    assert state.spec is not None
    spec = state.spec.by_name[ev.task]
    policy = state.spec.retry_of(spec)
    task.error, task.worker = ev.error, ev.worker or task.worker
    state.active -= 1
    if ev.retryable and ev.attempt < policy.max_attempts:
        delay = ev.retry_delay
        if delay is None:
            delay = next_delay(policy, ev.attempt, stable_random(state.run_id, ev.task, ev.attempt))
        task.status, task.due = TaskStatus.RETRYING, now + delay
        d.commands.append(ScheduleDue(ev.task, ev.attempt + 1, task.due))
        d.transitions.append(Transition(ev.task, ev.attempt, TaskStatus.RETRYING.value, ev.ts, ev.error))
        _fill_slots(state, now, d)
        return
    _fail(state, ev.task, ev.attempt, ev.error, ev.ts, now, d)


def _fail(state: RunState, name: str, attempt: int, error: str, ts: float, now: float, d: Decision) -> None:
    """The task's last attempt failed: dead-letter it and let its children and the run react."""
    assert state.spec is not None
    task = state.tasks[name]
    task.status, task.finished_at, task.error = TaskStatus.FAILED, ts, error
    d.commands.append(DeadLetter(name, attempt, state.spec.by_name[name].queue, error))
    d.transitions.append(Transition(name, attempt, TaskStatus.FAILED.value, ts, error))
    _settled(state, name, now, d)


def _on_due(state: RunState, ev: TaskDue, now: float, d: Decision) -> None:
    task = state.tasks.get(ev.task)
    if task is None:
        d.reason = f"no task {ev.task!r} in this run"
        return
    if task.status is TaskStatus.RETRYING and ev.attempt == task.attempt + 1:
        if ev.due > now:
            d.defer_until, d.reason = ev.due, "retry not due yet"
            return
        task.due = None
        _dispatch(state, ev.task, now, d)
    elif ev.attempt > task.attempt + 1 or (ev.attempt == task.attempt + 1 and task.status in TASK_ACTIVE):
        d.defer_until, d.reason = now + EARLY_RETRY, "timer ahead of the failure that set it"


def _on_deadline(state: RunState, ev: RunDeadline, now: float, d: Decision) -> None:
    if state.done or state.spec is None:
        d.reason = "run already finished"
        return
    if ev.due > now:
        d.defer_until, d.reason = ev.due, "deadline not reached"
        return
    # Results that come in later find their task cancelled and change nothing. Stopping the
    # handlers still running belongs to run control (a cancel sent to the workers).
    for name, task in state.tasks.items():
        if task.status not in TASK_DONE:
            task.status, task.finished_at, task.due = TaskStatus.CANCELLED, now, None
            d.transitions.append(Transition(name, task.attempt, TaskStatus.CANCELLED.value, now))
    state.ready.clear()
    state.active = state.remaining = 0
    limit = format_duration(state.spec.timeout or 0)
    _finish(state, RunStatus.FAILED, now, d, error=f"run timed out: not finished within its timeout of {limit}")


def _task_for(state: RunState, ev: TaskStarted | TaskSucceeded | TaskFailed, d: Decision) -> TaskState | None:
    """The task an event is about, or None (deferring the event when it came before its dispatch)."""
    task = state.tasks.get(ev.task)
    if task is None:
        d.reason = f"no task {ev.task!r} in this run"
        return None
    if ev.attempt > task.attempt or (task.status is TaskStatus.WAITING and not state.done):
        d.defer_until, d.reason = ev.ts + EARLY_RETRY, "result ahead of its dispatch"
        return None
    if ev.attempt < task.attempt or task.status not in TASK_ACTIVE:
        d.reason = "stale or duplicate"
    return task


def _dispatch(state: RunState, name: str, now: float, d: Decision) -> None:
    """Queue the task's next attempt, or hold it in `ready` while the run is at max_concurrency."""
    assert state.spec is not None
    limit = state.spec.max_concurrency
    if limit is not None and (state.active >= limit or state.ready):
        # Held tasks are queued by _fill_slots, highest priority first, not by who asks first.
        if name not in state.ready:
            state.ready.append(name)
        _fill_slots(state, now, d)
        return
    _start(state, name, now, d)


def _start(state: RunState, name: str, now: float, d: Decision) -> None:
    assert state.spec is not None
    spec = state.spec.by_name[name]
    task = state.tasks[name]
    payload, info = spec.payload, spec.template
    if task.attempt == 0 and spec.require and not _required_present(state, spec.require):
        task.status, task.finished_at = TaskStatus.SKIPPED, now
        d.transitions.append(Transition(name, 0, TaskStatus.SKIPPED.value, now, "a required value is missing"))
        _settled(state, name, now, d)
        return
    if name in state.spec.templated:
        try:
            scope = _scope(state)
            payload, info = templates.render(payload, scope), templates.render(info, scope)
        except templates.TemplateError as exc:
            # Rendering again would fail the same way: the attempt fails for good.
            task.attempt += 1
            _fail(state, name, task.attempt, f"TemplateError: {exc}", now, now, d)
            return
    task.status, task.attempt, task.queued_at = TaskStatus.QUEUED, task.attempt + 1, now
    task.started_at = task.finished_at = None
    state.active += 1
    d.commands.append(
        DispatchTask(name, task.attempt, spec.queue, spec.priority, spec.handler, payload, spec.timeout, info, spec.job)
    )
    d.transitions.append(Transition(name, task.attempt, TaskStatus.QUEUED.value, now))


def _fill_slots(state: RunState, now: float, d: Decision) -> None:
    """A slot freed up: dispatch held tasks, highest priority first, then in the order they became free."""
    assert state.spec is not None
    by_name = state.spec.by_name
    while state.ready and (state.spec.max_concurrency is None or state.active < state.spec.max_concurrency):
        best = max(range(len(state.ready)), key=lambda i: (by_name[state.ready[i]].priority, -i))
        _start(state, state.ready.pop(best), now, d)


class _Results(Mapping[str, Any]):
    """The results of a run's succeeded tasks, read on demand: a render touches one or two."""

    def __init__(self, tasks: dict[str, TaskState]) -> None:
        self._tasks = tasks

    def __getitem__(self, name: str) -> Any:
        task = self._tasks[name]
        if task.status is not TaskStatus.SUCCEEDED:
            raise KeyError(name)
        return task.result

    def __iter__(self) -> Iterator[str]:
        return (n for n, t in self._tasks.items() if t.status is TaskStatus.SUCCEEDED)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _scope(state: RunState) -> templates.Scope:
    moment = dt.datetime.fromtimestamp(state.logical_time, dt.UTC)
    return templates.Scope(logical_time=moment, params=state.params, meta=state.meta, results=_Results(state.tasks))


def _required_present(state: RunState, refs: tuple[str, ...]) -> bool:
    scope = _scope(state)
    try:
        return all(templates.present(ref, scope) for ref in refs)
    except templates.TemplateError:
        return False


def _settled(state: RunState, name: str, now: float, d: Decision) -> None:
    """`name` reached a final state: wake or skip its children, and finish the run when all are done."""
    assert state.spec is not None
    spec, tasks = state.spec, state.tasks
    stack = [name]
    while stack:
        done = stack.pop()
        state.remaining -= 1
        for child in spec.children[done]:
            if tasks[child].status is not TaskStatus.WAITING:
                continue
            child_spec = spec.by_name[child]
            verdict = evaluate(child_spec.trigger_rule, (tasks[p].status for p in child_spec.depends_on))
            if verdict is Verdict.RUN:
                _dispatch(state, child, now, d)
            elif verdict is Verdict.SKIP:
                tasks[child].status, tasks[child].finished_at = TaskStatus.SKIPPED, now
                d.transitions.append(Transition(child, 0, TaskStatus.SKIPPED.value, now))
                stack.append(child)
    if state.remaining > 0:
        _fill_slots(state, now, d)
    elif not state.done:
        failed = any(t.status is TaskStatus.FAILED for t in tasks.values())
        _finish(state, RunStatus.FAILED if failed else RunStatus.SUCCEEDED, now, d)


def _finish(state: RunState, status: RunStatus, now: float, d: Decision, error: str | None = None) -> None:
    state.status, state.finished_at = status, now
    if error is not None:
        state.error = error
    elif status is RunStatus.FAILED:
        failed = [n for n, t in state.tasks.items() if t.status is TaskStatus.FAILED]
        state.error = f"task {failed[0]!r} failed: {state.tasks[failed[0]].error}" if failed else None
    d.transitions.append(Transition(None, 0, status.value, now, state.error))
