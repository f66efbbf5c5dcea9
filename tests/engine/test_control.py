"""Run control in decide(): cancel, pause, resume, ignore, and the seeding of a rerun (no NATS here)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from jetdag.engine.errors import ControlError
from jetdag.engine.events import (
    DeadLetter,
    DispatchTask,
    InterruptTask,
    RunCancel,
    RunDeadline,
    RunPause,
    RunResume,
    RunSubmitted,
    ScheduleDue,
    TaskDue,
    TaskFailed,
    TaskIgnore,
    TaskStarted,
    TaskSucceeded,
)
from jetdag.engine.messages import decode_event, encode_event
from jetdag.engine.model import RetryPolicy, TaskSpec, TriggerRule, WorkflowSpec
from jetdag.engine.run import decide, rerun_done, why_not
from jetdag.engine.state import RunState, RunStatus, TaskStatus, new_run

ONCE = RetryPolicy(max_attempts=1)
TWICE = RetryPolicy(max_attempts=2, initial_delay=1.0, max_delay=1.0, jitter=0.0)


def diamond(retry: RetryPolicy = ONCE, **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(
        "diamond",
        (
            TaskSpec("a", "noop"),
            TaskSpec("b", "noop", depends_on=("a",)),
            TaskSpec("c", "noop", depends_on=("a",)),
            TaskSpec("d", "noop", depends_on=("b", "c")),
        ),
        retry=retry,
        **kw,
    )


def started(spec: WorkflowSpec, **submit: Any) -> tuple[RunState, list[Any]]:
    state = new_run("R", spec.name, 1, spec, {"p": 1}, 0.0)
    d = decide(state, RunSubmitted("R", spec.name, 1, {}, 0.0, **submit), now=1.0)
    return state, d.commands


def dispatched(commands: list[Any]) -> list[str]:
    return sorted(c.task for c in commands if isinstance(c, DispatchTask))


def succeed(state: RunState, name: str, now: float = 2.0, result: Any = None) -> list[Any]:
    return decide(state, TaskSucceeded("R", name, state.tasks[name].attempt, now, "w", result), now=now).commands


def fail(state: RunState, name: str, now: float = 2.0) -> list[Any]:
    return decide(state, TaskFailed("R", name, state.tasks[name].attempt, now, "boom", "w"), now=now).commands


def statuses(state: RunState) -> dict[str, str]:
    return {n: t.status.value for n, t in state.tasks.items()}


# --- the events on the wire ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        RunCancel("R", 1.0, "no longer needed", "ops"),
        RunPause("R", 1.0),
        RunResume("R", 1.0, "ops"),
        TaskIgnore("R", "b", 1.0, "known bad input", "ops"),
        RunSubmitted("R", "w", 3, {"x": 1}, 1.0, done={"a": {"rows": 3}}, rerun_of="OLD"),
    ],
)
def test_control_events_round_trip_the_wire(event: Any) -> None:
    assert decode_event("jd.evt.3.R", encode_event(event)) == event


# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_cancels_every_unfinished_task_and_interrupts_the_active_ones() -> None:
    state, _ = started(diamond())
    succeed(state, "a")
    decide(state, TaskStarted("R", "b", 1, 2.5, "w"), now=2.5)
    d = decide(state, RunCancel("R", 3.0, "wrong params", "ops"), now=3.0)
    assert state.status is RunStatus.CANCELLED and state.finished_at == 3.0
    assert state.error == "cancelled by ops: wrong params"
    assert statuses(state) == {"a": "succeeded", "b": "cancelled", "c": "cancelled", "d": "cancelled"}
    assert sorted((c.task, c.attempt) for c in d.commands if isinstance(c, InterruptTask)) == [("b", 1), ("c", 1)]
    assert [c for c in d.commands if not isinstance(c, InterruptTask)] == []
    assert (state.active, state.remaining, state.ready) == (0, 0, [])


def test_a_result_arriving_after_cancel_changes_nothing() -> None:
    state, _ = started(diamond())
    decide(state, RunCancel("R", 2.0), now=2.0)
    before = copy.deepcopy(state)
    for event in (
        TaskStarted("R", "a", 1, 3.0, "w"),
        TaskSucceeded("R", "a", 1, 3.0, "w", {"x": 1}),
        TaskFailed("R", "a", 1, 3.0, "cancelled", "w", retryable=False),
        TaskDue("R", "a", 2, 3.0, 3.0),
        RunDeadline("R", 3.0, 3.0),
        RunSubmitted("R", "diamond", 1, {}, 0.0),
    ):
        d = decide(state, event, now=4.0)
        assert not d.changed and d.commands == [] and d.defer_until is None, event
    assert state == before


def test_cancelling_a_finished_run_changes_nothing_and_says_why() -> None:
    state, _ = started(WorkflowSpec("one", (TaskSpec("a", "noop"),)))
    succeed(state, "a")
    d = decide(state, RunCancel("R", 3.0), now=3.0)
    assert not d.changed and d.commands == []
    assert d.reason == "the run already succeeded"
    assert state.status is RunStatus.SUCCEEDED
    again = decide(state, RunCancel("R", 3.0), now=3.0)
    assert not again.changed


def test_a_pending_delayed_run_can_be_cancelled_and_never_starts() -> None:
    spec = diamond()
    state = new_run("R", spec.name, 1, spec, {}, 0.0)
    submitted = RunSubmitted("R", spec.name, 1, {}, 0.0, not_before=100.0)
    assert decide(state, submitted, now=1.0).defer_until == 100.0
    decide(state, RunCancel("R", 2.0), now=2.0)
    assert state.status is RunStatus.CANCELLED
    d = decide(state, submitted, now=100.0)
    assert not d.changed and d.commands == [] and d.reason == "the run was cancelled"


def test_the_run_deadline_also_interrupts_running_attempts() -> None:
    state, _ = started(WorkflowSpec("slow", (TaskSpec("a", "noop"),), timeout=10.0))
    d = decide(state, RunDeadline("R", 1.0, 11.0), now=11.0)
    assert InterruptTask("a", 1) in d.commands
    assert state.status is RunStatus.FAILED


# --- pause and resume ------------------------------------------------------------------------------


def test_pause_holds_children_that_become_ready_while_results_are_still_applied() -> None:
    state, _ = started(diamond())
    d = decide(state, RunPause("R", 1.5), now=1.5)
    assert state.status is RunStatus.PAUSED and d.changed and d.commands == []
    commands = succeed(state, "a")
    assert state.tasks["a"].status is TaskStatus.SUCCEEDED, "a running task's result is applied"
    assert dispatched(commands) == [] and state.ready == ["b", "c"]
    assert statuses(state) == {"a": "succeeded", "b": "waiting", "c": "waiting", "d": "waiting"}


def test_resume_dispatches_everything_ready() -> None:
    state, _ = started(diamond())
    decide(state, RunPause("R", 1.5), now=1.5)
    succeed(state, "a")
    d = decide(state, RunResume("R", 3.0), now=3.0)
    assert state.status is RunStatus.RUNNING and dispatched(d.commands) == ["b", "c"] and state.ready == []
    succeed(state, "b", 4.0)
    succeed(state, "c", 4.0)
    succeed(state, "d", 5.0)
    assert state.status is RunStatus.SUCCEEDED


def test_resume_respects_max_concurrency_highest_priority_first() -> None:
    spec = WorkflowSpec(
        "fan",
        (
            TaskSpec("root", "noop"),
            *(TaskSpec(f"c{i}", "noop", depends_on=("root",), priority=i) for i in range(4)),
        ),
        max_concurrency=2,
    )
    state, _ = started(spec)
    decide(state, RunPause("R", 1.5), now=1.5)
    succeed(state, "root")
    assert state.ready == ["c0", "c1", "c2", "c3"]
    d = decide(state, RunResume("R", 3.0), now=3.0)
    assert dispatched(d.commands) == ["c2", "c3"] and state.active == 2
    assert dispatched(succeed(state, "c3", 4.0)) == ["c1"]


def test_a_retry_that_comes_due_while_paused_waits_for_the_resume() -> None:
    state, _ = started(WorkflowSpec("one", (TaskSpec("a", "noop"),), retry=TWICE))
    (due,) = fail(state, "a")
    assert isinstance(due, ScheduleDue)
    decide(state, RunPause("R", 2.5), now=2.5)
    d = decide(state, TaskDue("R", "a", 2, 2.0, due.due), now=due.due)
    assert d.commands == [] and state.ready == ["a"]
    d = decide(state, RunResume("R", 5.0), now=5.0)
    assert [(c.task, c.attempt) for c in d.commands if isinstance(c, DispatchTask)] == [("a", 2)]


def test_a_paused_run_whose_last_task_finishes_succeeds() -> None:
    state, _ = started(WorkflowSpec("one", (TaskSpec("a", "noop"),)))
    decide(state, RunPause("R", 1.5), now=1.5)
    succeed(state, "a")
    assert state.status is RunStatus.SUCCEEDED


def test_pause_and_resume_of_a_finished_or_unpaused_run_change_nothing() -> None:
    state, _ = started(diamond())
    assert decide(state, RunResume("R", 1.5), now=1.5).reason == "the run is not paused (it is running)"
    decide(state, RunPause("R", 1.5), now=1.5)
    assert decide(state, RunPause("R", 1.6), now=1.6).reason == "the run is already paused"
    decide(state, RunCancel("R", 2.0), now=2.0)
    for event in (RunPause("R", 3.0), RunResume("R", 3.0)):
        d = decide(state, event, now=3.0)
        assert not d.changed and d.reason == "the run already was cancelled"
    assert state.status is RunStatus.CANCELLED


def test_a_run_paused_before_its_delayed_start_starts_paused() -> None:
    spec = diamond()
    state = new_run("R", spec.name, 1, spec, {}, 0.0)
    decide(state, RunPause("R", 1.0), now=1.0)
    d = decide(state, RunSubmitted("R", spec.name, 1, {}, 0.0, not_before=5.0), now=5.0)
    assert state.status is RunStatus.PAUSED and dispatched(d.commands) == [] and state.ready == ["a"]
    d = decide(state, RunResume("R", 6.0), now=6.0)
    assert state.status is RunStatus.RUNNING and dispatched(d.commands) == ["a"]


def test_cancel_of_a_paused_run_cancels_the_held_tasks() -> None:
    state, _ = started(diamond())
    decide(state, RunPause("R", 1.5), now=1.5)
    succeed(state, "a")
    d = decide(state, RunCancel("R", 3.0), now=3.0)
    assert state.status is RunStatus.CANCELLED and state.ready == []
    assert [c for c in d.commands if isinstance(c, InterruptTask)] == []
    assert statuses(state) == {"a": "succeeded", "b": "cancelled", "c": "cancelled", "d": "cancelled"}


# --- ignore ----------------------------------------------------------------------------------------


def test_ignoring_the_failed_task_lets_an_all_success_child_run_and_the_run_succeed() -> None:
    state, _ = started(diamond())
    succeed(state, "a")
    commands = fail(state, "b")
    assert any(isinstance(c, DeadLetter) for c in commands)
    assert state.tasks["d"].status is TaskStatus.SKIPPED
    succeed(state, "c", 3.0)
    assert state.status is RunStatus.FAILED, "c was the last: the run failed because of b"

    d = decide(state, TaskIgnore("R", "b", 4.0, "flaky source", "ops"), now=4.0)
    assert state.tasks["b"].status is TaskStatus.IGNORED and state.tasks["b"].error == "boom"
    assert state.status is RunStatus.RUNNING and state.error is None and state.finished_at is None
    assert dispatched(d.commands) == ["d"], "the child skipped because of b is judged again"
    succeed(state, "d", 5.0)
    assert state.status is RunStatus.SUCCEEDED and state.remaining == 0


def test_ignoring_a_failed_task_while_the_run_still_runs_wakes_its_children() -> None:
    state, _ = started(diamond())
    succeed(state, "a")
    fail(state, "b")
    assert state.status is RunStatus.RUNNING and state.tasks["d"].status is TaskStatus.SKIPPED
    d = decide(state, TaskIgnore("R", "b", 3.0), now=3.0)
    assert dispatched(d.commands) == [] and state.tasks["d"].status is TaskStatus.WAITING, "d waits for c"
    assert dispatched(succeed(state, "c", 4.0)) == ["d"]
    succeed(state, "d", 5.0)
    assert state.status is RunStatus.SUCCEEDED


def test_ignoring_a_retrying_task_cancels_its_retry() -> None:
    state, _ = started(
        WorkflowSpec("pair", (TaskSpec("a", "noop"), TaskSpec("b", "noop", depends_on=("a",))), retry=TWICE)
    )
    (due,) = fail(state, "a")
    d = decide(state, TaskIgnore("R", "a", 2.5), now=2.5)
    assert state.tasks["a"].status is TaskStatus.IGNORED and dispatched(d.commands) == ["b"]
    late = decide(state, TaskDue("R", "a", 2, 2.0, due.due), now=due.due)
    assert not late.changed and late.commands == []
    succeed(state, "b", 4.0)
    assert state.status is RunStatus.SUCCEEDED


def test_a_task_skipped_for_another_failed_parent_stays_skipped() -> None:
    spec = WorkflowSpec(
        "two",
        (TaskSpec("x", "noop"), TaskSpec("y", "noop"), TaskSpec("z", "noop", depends_on=("x", "y"))),
        retry=ONCE,
    )
    state, _ = started(spec)
    fail(state, "x")
    fail(state, "y", 3.0)
    assert state.status is RunStatus.FAILED
    d = decide(state, TaskIgnore("R", "x", 4.0), now=4.0)
    assert dispatched(d.commands) == [] and state.tasks["z"].status is TaskStatus.SKIPPED
    assert state.status is RunStatus.FAILED and state.error == "task 'y' failed: boom"


def test_ignore_is_refused_for_a_task_that_did_not_fail_and_for_an_unknown_task() -> None:
    state, _ = started(diamond())
    before = copy.deepcopy(state)
    d = decide(state, TaskIgnore("R", "a", 2.0), now=2.0)
    assert not d.changed and d.reason == "task 'a' is queued: only a failed or retrying task can be ignored"
    d = decide(state, TaskIgnore("R", "nosuch", 2.0), now=2.0)
    assert not d.changed and d.reason == "the run has no task 'nosuch'"
    assert state == before


def test_ignore_does_not_revive_a_run_that_timed_out() -> None:
    spec = WorkflowSpec("pair", (TaskSpec("a", "noop"), TaskSpec("b", "noop")), retry=ONCE, timeout=10.0)
    state, _ = started(spec)
    fail(state, "a")
    decide(state, RunDeadline("R", 1.0, 11.0), now=11.0)
    d = decide(state, TaskIgnore("R", "a", 12.0), now=12.0)
    assert not d.changed and d.reason == "the run did not fail because of its tasks (it timed out)"
    assert state.status is RunStatus.FAILED


def test_why_not_speaks_for_the_client_in_the_statuses_of_a_view() -> None:
    assert why_not("cancel", "running", {}) is None
    assert why_not("cancel", "failed", {}) == "the run already failed"
    assert why_not("ignore", "failed", {"a": "failed", "b": "skipped"}, "a") is None
    assert why_not("ignore", "running", {"a": "succeeded"}, "a") is not None


# --- rerun -----------------------------------------------------------------------------------------


def original(spec: WorkflowSpec, failing: str) -> dict[str, Any]:
    """The snapshot of a finished run of `spec` in which `failing` failed and the rest succeeded or was skipped."""
    state, _ = started(spec)
    now = 2.0
    while not state.done:
        name = next(n for n, t in state.tasks.items() if t.status is TaskStatus.QUEUED)
        now += 1.0
        fail(state, name, now) if name == failing else succeed(state, name, now, {"from": name})
    return state.to_dict()


def test_rerun_from_a_task_runs_only_its_subgraph_with_the_original_results() -> None:
    spec = WorkflowSpec(
        "chain",
        (
            TaskSpec("a", "noop"),
            TaskSpec("b", "noop", depends_on=("a",), payload={"got": "{result:a.from}"}),
            TaskSpec("c", "noop", depends_on=("b",)),
            TaskSpec("side", "noop", depends_on=("a",)),
        ),
        retry=ONCE,
    )
    old = original(spec, "b")
    assert old["status"] == "failed"
    done = rerun_done("OLD", spec, old["tasks"], "b")
    assert done == {"a": {"from": "a"}, "side": {"from": "side"}}

    state, commands = started(spec, done=done, rerun_of="OLD")
    assert state.rerun_of == "OLD" and state.to_dict()["rerun_of"] == "OLD"
    assert [(c.task, c.payload) for c in commands if isinstance(c, DispatchTask)] == [("b", {"got": "a"})]
    assert {n: (t.status.value, t.attempt) for n, t in state.tasks.items()} == {
        "a": ("succeeded", 0),
        "b": ("queued", 1),
        "c": ("waiting", 0),
        "side": ("succeeded", 0),
    }
    assert dispatched(succeed(state, "b", 3.0)) == ["c"]
    succeed(state, "c", 4.0)
    assert state.status is RunStatus.SUCCEEDED
    assert RunState.from_dict(state.to_dict(), spec).rerun_of == "OLD"


def test_rerun_without_a_task_runs_what_did_not_succeed_and_its_descendants() -> None:
    spec = diamond()
    old = original(spec, "b")
    assert {n: t["status"] for n, t in old["tasks"].items()} == {
        "a": "succeeded",
        "b": "failed",
        "c": "succeeded",
        "d": "skipped",
    }
    done = rerun_done("OLD", spec, old["tasks"])
    assert done == {"a": {"from": "a"}, "c": {"from": "c"}}
    state, commands = started(spec, done=done)
    assert dispatched(commands) == ["b"] and state.tasks["d"].status is TaskStatus.WAITING


def test_rerun_of_a_run_that_succeeded_runs_it_all_again() -> None:
    spec = diamond()
    old = original(spec, "none")
    assert rerun_done("OLD", spec, old["tasks"]) == {}
    _, commands = started(spec, done=None)
    assert dispatched(commands) == ["a"]


def test_a_seeded_child_with_a_one_failed_rule_is_skipped_and_the_run_can_finish_at_once() -> None:
    spec = WorkflowSpec(
        "alert",
        (TaskSpec("a", "noop"), TaskSpec("on_fail", "noop", depends_on=("a",), trigger_rule=TriggerRule.ONE_FAILED)),
    )
    state, commands = started(spec, done={"a": None})
    assert commands == [] and state.tasks["on_fail"].status is TaskStatus.SKIPPED
    assert state.status is RunStatus.SUCCEEDED


def test_rerun_from_an_unknown_task_names_the_task_and_the_run() -> None:
    spec = diamond()
    with pytest.raises(ControlError, match=r"run OLD has no task 'nosuch'"):
        rerun_done("OLD", spec, original(spec, "b")["tasks"], "nosuch")


def test_rerun_from_a_task_refuses_when_a_kept_task_did_not_succeed() -> None:
    spec = diamond()
    old = original(spec, "b")
    with pytest.raises(ControlError, match=r"task 'b' is not downstream of it and did not succeed \(failed\)"):
        rerun_done("OLD", spec, old["tasks"], "c")


def test_an_ignored_task_is_kept_as_succeeded_without_a_result() -> None:
    spec = diamond()
    state = RunState.from_dict(original(spec, "b"), spec)
    decide(state, TaskIgnore("R", "b", 10.0), now=10.0)
    succeed(state, "d", 11.0)
    assert state.status is RunStatus.SUCCEEDED
    assert rerun_done("OLD", spec, state.to_dict()["tasks"], "d") == {"a": {"from": "a"}, "b": None, "c": {"from": "c"}}
