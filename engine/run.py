"""The run state machine: decide(state, event, now) -> Decision. Pure; never raises.

decide() owns the state it is given and updates it in place (a 100k-task run is not copied per
event); callers that need the old state keep a copy. Time comes in as `now`, randomness is
derived from the run, task and attempt, so the same inputs always give the same outputs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from jetdag.engine import templates
from jetdag.engine.durations import format_duration
from jetdag.engine.errors import ControlError
from jetdag.engine.events import (
    DeadLetter,
    Decision,
    DispatchTask,
    Event,
    InterruptTask,
    ReleaseSlot,
    RequestSlot,
    RunAdmitted,
    RunCancel,
    RunDeadline,
    RunHoldCheck,
    RunPause,
    RunResume,
    RunSubmitted,
    ScheduleDeadline,
    ScheduleDue,
    ScheduleHoldCheck,
    TaskDue,
    TaskFailed,
    TaskIgnore,
    TaskStarted,
    TaskSucceeded,
    Transition,
)
from jetdag.engine.model import TaskSpec, TriggerRule, WorkflowSpec
from jetdag.engine.retry import next_delay, stable_random
from jetdag.engine.rules import Verdict, evaluate
from jetdag.engine.state import (
    RUN_DONE,
    TASK_ACTIVE,
    TASK_DONE,
    RunState,
    RunStatus,
    TaskState,
    TaskStatus,
)

log = logging.getLogger(__name__)

EARLY_RETRY = 0.5
"""Seconds before an event that arrived ahead of its cause is looked at again."""

HOLD_CHECK = 30.0
"""Seconds between a held run's requests for a slot of its workflow's `max_active_runs`. The run that frees a
slot wakes the next in line at once; this only makes up for a wake-up lost with a crashed engine."""


def decide(state: RunState | None, event: Event, now: float) -> Decision:
    """Apply `event` to `state` (in place) and say what must happen next."""
    if state is None:
        return Decision(defer_until=now + EARLY_RETRY, reason="the run does not exist yet")
    decision = Decision()
    try:
        match event:
            case RunSubmitted():
                _on_submitted(state, event, now, decision)
            case RunAdmitted():
                _on_admitted(state, event, now, decision)
            case RunHoldCheck():
                _on_hold_check(state, event, now, decision)
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
            case RunCancel():
                _on_cancel(state, event, now, decision)
            case RunPause():
                _on_pause(state, event, now, decision)
            case RunResume():
                _on_resume(state, event, now, decision)
            case TaskIgnore():
                _on_ignore(state, event, now, decision)
    except Exception as exc:  # a bug here must fail one run, not the engine
        log.exception("decide failed for run %s on %s", state.run_id, event.kind)
        decision = Decision()
        _finish(state, RunStatus.FAILED, now, decision, error=f"internal error: {type(exc).__name__}: {exc}")
    if decision.changed:
        state.seq += 1
    return decision


def _on_submitted(state: RunState, ev: RunSubmitted, now: float, d: Decision) -> None:
    # A run paused (or cancelled) before its delayed submission came due has not started either.
    if state.started_at is not None or state.status not in (RunStatus.PENDING, RunStatus.PAUSED):
        d.reason = "duplicate submission" if state.status is not RunStatus.CANCELLED else "the run was cancelled"
        return
    if ev.not_before is not None and ev.not_before > now:
        d.defer_until, d.reason = ev.not_before, "delayed submission"
        return
    if ev.error or state.spec is None:
        _finish(state, RunStatus.FAILED, now, d, error=ev.error or "the run has no workflow definition")
        return
    if state.held:
        d.reason = "duplicate submission (the run waits for a slot)"
        return
    state.rerun_of, state.start, state.trigger = ev.rerun_of, ev.start, ev.trigger
    if state.spec.max_active_runs is not None:
        # Recorded as pending (the snapshot shows it waiting); a RunAdmitted starts it.
        state.held, state.seed = True, ev.done
        d.transitions.append(Transition(None, 0, state.status.value, now))
        d.commands += [RequestSlot(), ScheduleHoldCheck(now + HOLD_CHECK)]
        return
    _begin(state, ev.done or {}, now, d)


def _begin(state: RunState, done: Mapping[str, Any], now: float, d: Decision) -> None:
    """The run starts: its start tasks (or roots) are dispatched, a rerun's kept tasks are seeded."""
    assert state.spec is not None
    # Paused before it started: it starts paused, its roots wait in `ready` for the resume.
    state.status = RunStatus.PAUSED if state.status is RunStatus.PAUSED else RunStatus.RUNNING
    state.started_at = now
    d.transitions.append(Transition(None, 0, state.status.value, now))
    if not state.tasks:
        _finish(state, RunStatus.SUCCEEDED, now, d)
        return
    if state.spec.timeout is not None:
        d.commands.append(ScheduleDeadline(now + state.spec.timeout))
    starts = _skip_outside_start(state, now, d)
    _seed_done(state, done, now, d)
    for name in starts:
        if state.tasks[name].status is TaskStatus.WAITING and not state.done:
            _dispatch(state, name, now, d)


def _skip_outside_start(state: RunState, now: float, d: Decision) -> tuple[str, ...]:
    """A run a trigger starts at some tasks (a flowlord phase): every task not downstream of them is skipped
    (a child of one of them and of a skipped task judges that skip by its rule). The tasks to dispatch."""
    assert state.spec is not None
    starts = tuple(name for name in state.start or () if name in state.tasks)
    if not starts:
        return state.spec.roots
    reach = _downstream(state.spec, starts)
    why = f"not downstream of {', '.join(starts)}, where the trigger starts this run"
    for name, task in state.tasks.items():
        if name not in reach:
            task.status, task.finished_at = TaskStatus.SKIPPED, now
            state.remaining -= 1
            d.transitions.append(Transition(name, 0, TaskStatus.SKIPPED.value, now, why))
    return starts


def _on_admitted(state: RunState, ev: RunAdmitted, now: float, d: Decision) -> None:
    if not state.held or state.done:
        d.reason = "the run does not wait for a slot"
        return
    state.held = False
    done, state.seed = state.seed or {}, None
    _begin(state, done, now, d)


def _on_hold_check(state: RunState, ev: RunHoldCheck, now: float, d: Decision) -> None:
    if not state.held or state.done:
        d.reason = "the run does not wait for a slot"
        return
    if ev.due > now:
        d.defer_until, d.reason = ev.due, "hold check not due yet"
        return
    d.commands += [RequestSlot(recheck=True), ScheduleHoldCheck(now + HOLD_CHECK)]


def _seed_done(state: RunState, done: Mapping[str, Any], now: float, d: Decision) -> None:
    """A rerun: tasks it does not run again are succeeded at once with the original run's results
    (attempt 0: they did not run here), and their children are woken as if they had just finished."""
    names = [name for name in done if name in state.tasks]
    for name in names:
        task = state.tasks[name]
        task.status, task.result, task.finished_at = TaskStatus.SUCCEEDED, done[name], now
        d.transitions.append(Transition(name, 0, TaskStatus.SUCCEEDED.value, now))
    # Every one is marked before any is settled: a child of two seeded parents must see both done.
    for name in names:
        _settled(state, name, now, d)


def _on_started(state: RunState, ev: TaskStarted, now: float, d: Decision) -> None:
    task = _task_for(state, ev, now, d)
    if task is None or task.attempt != ev.attempt or task.status is not TaskStatus.QUEUED:
        return
    task.status, task.started_at, task.worker = TaskStatus.RUNNING, ev.ts, ev.worker
    d.transitions.append(Transition(ev.task, ev.attempt, TaskStatus.RUNNING.value, ev.ts))


def _began(task: TaskState, ev: TaskSucceeded | TaskFailed, d: Decision) -> None:
    """A result of an attempt not seen starting (a short task's start comes with its result): it ran from
    `ev.started`, recorded as if its task.started had come first, so step records and audit show it."""
    if task.status is TaskStatus.QUEUED and ev.started is not None:
        task.status, task.started_at, task.worker = TaskStatus.RUNNING, ev.started, ev.worker
        d.transitions.append(Transition(ev.task, ev.attempt, TaskStatus.RUNNING.value, ev.started))


def _on_succeeded(state: RunState, ev: TaskSucceeded, now: float, d: Decision) -> None:
    task = _task_for(state, ev, now, d)
    if task is None or task.attempt != ev.attempt or task.status not in TASK_ACTIVE:
        return
    _began(task, ev, d)
    task.status, task.finished_at, task.result, task.error = TaskStatus.SUCCEEDED, ev.ts, ev.result, None
    task.worker = ev.worker or task.worker
    state.active -= 1
    d.transitions.append(Transition(ev.task, ev.attempt, TaskStatus.SUCCEEDED.value, ev.ts))
    _settled(state, ev.task, now, d)


def _on_failed(state: RunState, ev: TaskFailed, now: float, d: Decision) -> None:
    task = _task_for(state, ev, now, d)
    if task is None or task.attempt != ev.attempt or task.status not in TASK_ACTIVE:
        return
    assert state.spec is not None
    _began(task, ev, d)
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
    _cancel_tasks(state, now, d)
    limit = format_duration(state.spec.timeout or 0)
    _finish(state, RunStatus.FAILED, now, d, error=f"run timed out: not finished within its timeout of {limit}")


def _cancel_tasks(state: RunState, now: float, d: Decision) -> None:
    """Cancel every task not yet final, and ask the workers to stop the attempts that may be running.

    Results that come in later find their task cancelled and change nothing; the interrupt only
    saves the work (a queued attempt a worker has not taken yet is skipped if that worker heard it).
    """
    for name, task in state.tasks.items():
        if task.status in TASK_DONE:
            continue
        if task.status in TASK_ACTIVE:
            d.commands.append(InterruptTask(name, task.attempt))
        task.status, task.finished_at, task.due = TaskStatus.CANCELLED, now, None
        d.transitions.append(Transition(name, task.attempt, TaskStatus.CANCELLED.value, now))
    state.ready.clear()
    state.active = state.remaining = 0


# --- run control: cancel, pause, resume, ignore (see README "Run control") -----------------------


def why_not(verb: str, run_status: str, tasks: Mapping[str, str], task: str | None = None) -> str | None:
    """Why an operator's `verb` (cancel, pause, resume, ignore) changes nothing for a run in `run_status`
    whose tasks are in `tasks` (name -> status); None when it applies. decide and the Client share it,
    so what the Client accepts is what decide applies."""
    status = RunStatus(run_status)
    if verb == "ignore":
        return _why_not_ignore(status, {n: TaskStatus(s) for n, s in tasks.items()}, task or "")
    if status in RUN_DONE:
        return f"the run already {'was cancelled' if status is RunStatus.CANCELLED else status.value}"
    if verb == "pause" and status is RunStatus.PAUSED:
        return "the run is already paused"
    if verb == "resume" and status is not RunStatus.PAUSED:
        return f"the run is not paused (it is {status.value})"
    return None


def _why_not_ignore(status: RunStatus, tasks: Mapping[str, TaskStatus], name: str) -> str | None:
    if name not in tasks:
        return f"the run has no task {name!r}"
    if status is RunStatus.CANCELLED:
        return "the run was cancelled"
    if tasks[name] not in (TaskStatus.FAILED, TaskStatus.RETRYING):
        return f"task {name!r} is {tasks[name].value}: only a failed or retrying task can be ignored"
    if status is RunStatus.FAILED and not _failed_by_tasks(tasks.values()):
        # A timeout cancelled what was left: there is nothing for the run to go on with.
        return "the run did not fail because of its tasks (it timed out)"
    return None


def _failed_by_tasks(tasks: Iterable[TaskStatus]) -> bool:
    """A failed run ended because tasks failed (every task final, none cancelled by a timeout)."""
    return all(s in TASK_DONE and s is not TaskStatus.CANCELLED for s in tasks)


def _said(what: str, by: str, reason: str) -> str:
    return what + (f" by {by}" if by else "") + (f": {reason}" if reason else "")


def _refused(state: RunState, verb: str, d: Decision, task: str | None = None) -> bool:
    tasks = {n: t.status.value for n, t in state.tasks.items()} if verb == "ignore" else {}
    d.reason = why_not(verb, state.status.value, tasks, task)
    if d.reason is None and verb != "cancel" and state.spec is None:
        d.reason = "the run has no workflow definition"
    return d.reason is not None


def _on_cancel(state: RunState, ev: RunCancel, now: float, d: Decision) -> None:
    if _refused(state, "cancel", d):
        return
    _cancel_tasks(state, now, d)
    _finish(state, RunStatus.CANCELLED, now, d, error=_said("cancelled", ev.by, ev.reason))


def _on_pause(state: RunState, ev: RunPause, now: float, d: Decision) -> None:
    # Only dispatching stops: running attempts finish and their results are applied (_dispatch holds the rest).
    if _refused(state, "pause", d):
        return
    state.status = RunStatus.PAUSED
    d.transitions.append(Transition(None, 0, RunStatus.PAUSED.value, now))


def _on_resume(state: RunState, ev: RunResume, now: float, d: Decision) -> None:
    if _refused(state, "resume", d):
        return
    state.status = RunStatus.RUNNING if state.started_at is not None else RunStatus.PENDING
    d.transitions.append(Transition(None, 0, state.status.value, now))
    _fill_slots(state, now, d)


def _on_ignore(state: RunState, ev: TaskIgnore, now: float, d: Decision) -> None:
    """The task counts as succeeded for its children (and the run) from now on; its failure stays on record."""
    if _refused(state, "ignore", d, ev.task):
        return
    task = state.tasks[ev.task]
    was_final = task.status is TaskStatus.FAILED
    if state.done:  # it failed because of its tasks (why_not checked): it goes on without this one
        state.status, state.finished_at, state.error = RunStatus.RUNNING, None, None
        d.transitions.append(Transition(None, 0, RunStatus.RUNNING.value, now))
    if ev.task in state.ready:  # a retry that came due while paused or at max_concurrency
        state.ready.remove(ev.task)
    task.status, task.finished_at, task.due = TaskStatus.IGNORED, now, None
    note = _said("ignored", ev.by, ev.reason)
    d.transitions.append(Transition(ev.task, task.attempt, TaskStatus.IGNORED.value, now, note))
    _reopen_skipped(state, ev.task, now, d)
    if was_final:
        state.remaining += 1  # counted down when it failed; _settled counts it down again
    _settled(state, ev.task, now, d)


def _reopen_skipped(state: RunState, name: str, now: float, d: Decision) -> None:
    """Tasks skipped downstream of `name` (through skipped tasks only) wait again, to be judged anew.

    Each reopened task has a parent that is `name` or reopened, so one settling always judges it
    again; a task still skipped for another reason (another failed parent) is skipped again then.
    """
    assert state.spec is not None
    state.parents_done.clear()  # tasks leave the done set here: scan indexes would run ahead of them
    stack = [name]
    while stack:
        for child in state.spec.children[stack.pop()]:
            task = state.tasks[child]
            if task.status is TaskStatus.SKIPPED:
                task.status, task.finished_at = TaskStatus.WAITING, None
                state.remaining += 1
                d.transitions.append(Transition(child, 0, TaskStatus.WAITING.value, now))
                stack.append(child)


# --- rerun -----------------------------------------------------------------------------------------


def rerun_done(
    run_id: str,
    spec: WorkflowSpec,
    tasks: Mapping[str, Mapping[str, Any]],
    from_task: str | None = None,
    start: Iterable[str] | None = None,
) -> dict[str, Any]:
    """What a rerun of run `run_id` (its snapshot's `tasks`) keeps: task -> result, for RunSubmitted.done.

    From `from_task`: it and everything downstream run again, the rest is kept. Without it: the
    tasks that did not succeed (failed, cancelled, skipped) and everything downstream of them run
    again; when every task succeeded, all run again. A kept task must have succeeded or been
    ignored (it is kept as succeeded, with no result); ControlError says which one did not. A run a trigger
    started at some tasks (`start`) reruns from there too: the tasks it skipped as not downstream of them
    are neither run nor kept.
    """
    if from_task is not None and from_task not in spec.by_name:
        known = ", ".join(spec.by_name)
        raise ControlError(f"run {run_id} has no task {from_task!r} to rerun from (its tasks: {known})")
    starts = [name for name in start or () if name in spec.by_name]
    reach = _downstream(spec, starts) if starts else set(spec.by_name)
    if from_task is not None and from_task not in reach:
        raise ControlError(
            f"run {run_id} did not run {from_task!r}: its trigger starts it at {', '.join(starts)}, and "
            f"{from_task!r} is not downstream of that"
        )
    ok = ("succeeded", "ignored")
    if from_task is not None:
        again = _downstream(spec, [from_task])
    else:
        not_ok = [n for n in reach if (tasks.get(n) or {}).get("status") not in ok]
        again = _downstream(spec, not_ok) if not_ok else reach
    done: dict[str, Any] = {}
    for name in spec.by_name:
        if name in again or name not in reach:
            continue
        status = (tasks.get(name) or {}).get("status")
        if status not in ok:
            raise ControlError(
                f"cannot rerun run {run_id} from {from_task!r}: task {name!r} is not downstream of it and did "
                f"not succeed ({status}); rerun from a task upstream of it, or without --from"
            )
        done[name] = (tasks[name] or {}).get("result") if status == "succeeded" else None
    return done


def _downstream(spec: WorkflowSpec, starts: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(spec.children[name])
    return seen


def _task_for(
    state: RunState, ev: TaskStarted | TaskSucceeded | TaskFailed, now: float, d: Decision
) -> TaskState | None:
    """The task an event is about, or None (deferring the event when it came before its dispatch)."""
    task = state.tasks.get(ev.task)
    if task is None:
        d.reason = f"no task {ev.task!r} in this run"
        return None
    if ev.attempt > task.attempt or (task.status is TaskStatus.WAITING and not state.done):
        # From now, not from ev.ts: a result older than EARLY_RETRY came back at once, 50 times in a blink,
        # and was dropped (actors/run.py) long before the event that dispatched it was redelivered.
        d.defer_until, d.reason = now + EARLY_RETRY, "result ahead of its dispatch"
        return None
    if ev.attempt < task.attempt or task.status not in TASK_ACTIVE:
        d.reason = "stale or duplicate"
    return task


def _dispatch(state: RunState, name: str, now: float, d: Decision) -> None:
    """Queue the task's next attempt, or hold it in `ready` while the run is at max_concurrency."""
    assert state.spec is not None
    limit = state.spec.max_concurrency
    if state.status is RunStatus.PAUSED or (limit is not None and (state.active >= limit or state.ready)):
        # Held tasks are queued by _fill_slots, highest priority first, not by who asks first
        # (and, while the run is paused, by the resume).
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
    d.commands.append(DispatchTask(
        name, task.attempt, spec.queue, spec.priority, spec.handler, payload, spec.timeout, info, spec.job,
        spec.requires or None,
    ))  # fmt: skip
    d.transitions.append(Transition(name, task.attempt, TaskStatus.QUEUED.value, now))


def _fill_slots(state: RunState, now: float, d: Decision) -> None:
    """A slot freed up: dispatch held tasks, highest priority first, then in the order they became free."""
    assert state.spec is not None
    if state.status is RunStatus.PAUSED:
        return
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
            verdict = _judge(state, spec.by_name[child], tasks[done].status)
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


def _judge(state: RunState, child: TaskSpec, settled: TaskStatus) -> Verdict:
    """The verdict on a waiting `child` now that one of its parents settled as `settled`.

    Judging every parent at each parent's end made a join of N parents cost N² (a 10,000-wide fan-in
    spent most of its run there). While parents are open, only an outcome that can decide the rule on
    its own needs the full judgement; otherwise the child waits, and a scan index counts the parents
    done, moving past each once (statuses only leave the done set through `_reopen_skipped`, which
    clears the index).
    """
    parents, tasks = child.depends_on, state.tasks
    i = state.parents_done.get(child.name, 0)
    while i < len(parents) and tasks[parents[i]].status in TASK_DONE:
        i += 1
    state.parents_done[child.name] = i
    if i < len(parents) and settled not in _DECISIVE[child.trigger_rule]:
        return Verdict.WAIT
    return evaluate(child.trigger_rule, (tasks[p].status for p in parents))


_DECISIVE: Final = {
    # The outcomes of one parent that can settle a rule before every parent is done (rules.evaluate).
    TriggerRule.ALL_SUCCESS: frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED}),
    TriggerRule.ALL_DONE: frozenset(),
    TriggerRule.ALL_FAILED: frozenset({TaskStatus.SUCCEEDED, TaskStatus.IGNORED, TaskStatus.SKIPPED}),
    TriggerRule.ONE_SUCCESS: frozenset({TaskStatus.SUCCEEDED, TaskStatus.IGNORED}),
    TriggerRule.ONE_FAILED: frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED}),
    TriggerRule.NONE_FAILED: frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED}),
}


def _finish(state: RunState, status: RunStatus, now: float, d: Decision, error: str | None = None) -> None:
    state.status, state.finished_at = status, now
    if state.spec is not None and state.spec.max_active_runs is not None:
        d.commands.append(ReleaseSlot())  # its slot, or its place in line; harmless when it had neither
    state.held, state.seed = False, None
    if error is not None:
        state.error = error
    elif status is RunStatus.FAILED:
        failed = [n for n, t in state.tasks.items() if t.status is TaskStatus.FAILED]
        state.error = f"task {failed[0]!r} failed: {state.tasks[failed[0]].error}" if failed else None
    d.transitions.append(Transition(None, 0, status.value, now, state.error))
