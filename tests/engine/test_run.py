"""decide(): examples, recorded histories, and properties over any delivery order (no NATS here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetdag.engine.events import (
    EVENT_TYPES,
    DeadLetter,
    DispatchTask,
    RunSubmitted,
    ScheduleDue,
    TaskDue,
    TaskFailed,
    TaskIgnore,
    TaskStarted,
    TaskSucceeded,
)
from jetdag.engine.model import RetryPolicy, TaskSpec, TriggerRule, WorkflowSpec
from jetdag.engine.rules import Verdict, evaluate
from jetdag.engine.run import decide
from jetdag.engine.state import RunState, RunStatus, TaskStatus, new_run

from .sim import World, outcome

FAST = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=10.0, backoff_factor=2.0, jitter=0.1)


def diamond(**task_kw: Any) -> WorkflowSpec:
    return WorkflowSpec(
        "diamond",
        (
            TaskSpec("a", "noop", **task_kw),
            TaskSpec("b", "noop", depends_on=("a",), **task_kw),
            TaskSpec("c", "noop", depends_on=("a",), **task_kw),
            TaskSpec("d", "noop", depends_on=("b", "c"), **task_kw),
        ),
        retry=FAST,
    )


def started(spec: WorkflowSpec) -> RunState:
    state = new_run("R", spec.name, 1, spec, {"p": 1}, 0.0)
    decide(state, RunSubmitted("R", spec.name, 1, {}, 0.0), now=1.0)
    return state


def test_submission_dispatches_the_roots_only() -> None:
    state = new_run("R", "diamond", 1, diamond(), {}, 0.0)
    d = decide(state, RunSubmitted("R", "diamond", 1, {}, 0.0), now=1.0)
    assert [c.task for c in d.commands if isinstance(c, DispatchTask)] == ["a"]
    assert state.status is RunStatus.RUNNING
    assert state.tasks["a"].status is TaskStatus.QUEUED and state.tasks["a"].attempt == 1


def test_a_child_waits_for_every_parent() -> None:
    state = started(diamond())
    d = decide(state, TaskSucceeded("R", "a", 1, 2.0), now=2.0)
    assert sorted(c.task for c in d.commands if isinstance(c, DispatchTask)) == ["b", "c"]
    d = decide(state, TaskSucceeded("R", "b", 1, 3.0), now=3.0)
    assert d.commands == []
    d = decide(state, TaskSucceeded("R", "c", 1, 4.0), now=4.0)
    assert [c.task for c in d.commands if isinstance(c, DispatchTask)] == ["d"]
    decide(state, TaskSucceeded("R", "d", 1, 5.0), now=5.0)
    assert state.status is RunStatus.SUCCEEDED and state.remaining == 0


def test_a_failure_schedules_a_retry_with_backoff_then_dispatches_when_due() -> None:
    state = started(diamond())
    d = decide(state, TaskFailed("R", "a", 1, 2.0, "boom"), now=2.0)
    (due,) = d.commands
    assert isinstance(due, ScheduleDue) and due.attempt == 2 and 2.9 <= due.due <= 3.1
    assert state.tasks["a"].status is TaskStatus.RETRYING
    early = decide(state, TaskDue("R", "a", 2, 2.0, due.due), now=2.5)
    assert early.defer_until == due.due and early.commands == []
    d = decide(state, TaskDue("R", "a", 2, 2.0, due.due), now=due.due)
    assert [(c.task, c.attempt) for c in d.commands if isinstance(c, DispatchTask)] == [("a", 2)]


def test_the_last_failed_attempt_dead_letters_the_task_and_fails_the_run() -> None:
    spec = WorkflowSpec("one", (TaskSpec("x", "noop", retry=RetryPolicy(max_attempts=1)),))
    state = started(spec)
    d = decide(state, TaskFailed("R", "x", 1, 2.0, "disk full"), now=2.0)
    assert d.commands == [DeadLetter("x", 1, "default", "disk full")]
    assert state.status is RunStatus.FAILED and state.error == "task 'x' failed: disk full"


def test_a_non_retryable_failure_is_final_at_once() -> None:
    state = started(diamond())
    decide(state, TaskFailed("R", "a", 1, 2.0, "bad input", retryable=False), now=2.0)
    assert state.tasks["a"].status is TaskStatus.FAILED
    assert {n: t.status for n, t in state.tasks.items() if n != "a"} == {
        "b": TaskStatus.SKIPPED,
        "c": TaskStatus.SKIPPED,
        "d": TaskStatus.SKIPPED,
    }
    assert state.status is RunStatus.FAILED


def test_a_handler_asked_delay_overrides_the_backoff() -> None:
    state = started(diamond())
    d = decide(state, TaskFailed("R", "a", 1, 2.0, "later", retry_delay=30.0), now=2.0)
    assert d.commands == [ScheduleDue("a", 2, 32.0)]


def test_stale_and_duplicate_results_change_nothing() -> None:
    state = started(diamond())
    decide(state, TaskFailed("R", "a", 1, 2.0, "boom"), now=2.0)
    decide(state, TaskDue("R", "a", 2, 2.0, 3.0), now=4.0)
    before = copy.deepcopy(state)
    stale = (TaskSucceeded("R", "a", 1, 5.0), TaskFailed("R", "a", 1, 5.0, "again"), TaskStarted("R", "a", 1, 5.0))
    for event in stale:
        d = decide(state, event, now=5.0)
        assert not d.changed and d.commands == []
    assert outcome(state) == outcome(before)


def test_an_event_ahead_of_its_dispatch_is_deferred_not_dropped() -> None:
    state = started(diamond())
    d = decide(state, TaskSucceeded("R", "b", 1, 2.0), now=2.0)
    assert d.defer_until is not None and state.tasks["b"].status is TaskStatus.WAITING
    assert decide(None, TaskSucceeded("R", "b", 1, 2.0), now=2.0).defer_until is not None


def test_a_delayed_submission_waits_until_its_time() -> None:
    state = new_run("R", "diamond", 1, diamond(), {}, 0.0)
    d = decide(state, RunSubmitted("R", "diamond", 1, {}, 0.0, not_before=50.0), now=1.0)
    assert d.defer_until == 50.0 and state.status is RunStatus.PENDING


def test_an_unknown_workflow_fails_the_run_with_the_reason() -> None:
    state = new_run("R", "ghost", 0, None, {}, 0.0)
    decide(state, RunSubmitted("R", "ghost", 0, {}, 0.0, error="unknown workflow 'ghost'"), now=1.0)
    assert state.status is RunStatus.FAILED and state.error == "unknown workflow 'ghost'"


def test_cleanup_with_all_done_runs_after_a_failure() -> None:
    spec = WorkflowSpec(
        "etl",
        (
            TaskSpec("extract", "noop", retry=RetryPolicy(max_attempts=1)),
            TaskSpec("load", "noop", depends_on=("extract",)),
            TaskSpec("cleanup", "noop", depends_on=("load",), trigger_rule=TriggerRule.ALL_DONE),
        ),
    )
    state = started(spec)
    d = decide(state, TaskFailed("R", "extract", 1, 2.0, "x"), now=2.0)
    assert state.tasks["load"].status is TaskStatus.SKIPPED
    assert [c.task for c in d.commands if isinstance(c, DispatchTask)] == ["cleanup"]


def test_the_state_survives_its_snapshot() -> None:
    state = started(diamond())
    decide(state, TaskSucceeded("R", "a", 1, 2.0, result={"rows": 3}), now=2.0)
    again = RunState.from_dict(state.to_dict(), state.spec)
    assert outcome(again) == outcome(state) and again.remaining == state.remaining and again.seq == state.seq


# --- recorded histories -------------------------------------------------------------------------

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_recorded_history_replays_to_its_recorded_end(path: Path) -> None:
    history = json.loads(path.read_text())
    spec = WorkflowSpec.from_dict(history["workflow"])
    state = new_run("R", spec.name, 1, spec, {}, 0.0)
    for i, raw in enumerate(history["events"]):
        fields = {k: v for k, v in raw.items() if k not in ("kind", "now")}
        event = EVENT_TYPES[raw["kind"]](run_id="R", **fields)
        decide(state, event, now=raw.get("now", float(i + 1)))
    expected = history["expect"]
    assert state.status.value == expected["status"]
    assert {n: [t.status.value, t.attempt] for n, t in state.tasks.items()} == expected["tasks"]


# --- properties ---------------------------------------------------------------------------------


@st.composite
def workflows(draw: st.DrawFn) -> tuple[WorkflowSpec, dict[tuple[str, int], bool]]:
    n = draw(st.integers(1, 7))
    tasks = []
    for i in range(n):
        parents = draw(st.lists(st.sampled_from([f"t{j}" for j in range(i)]), unique=True)) if i else []
        rule = draw(st.sampled_from(list(TriggerRule))) if parents else TriggerRule.ALL_SUCCESS
        attempts = draw(st.integers(1, 3))
        tasks.append(TaskSpec(f"t{i}", "noop", depends_on=tuple(parents), trigger_rule=rule,
                              retry=RetryPolicy(max_attempts=attempts, initial_delay=1.0, max_delay=5.0)))  # fmt: skip
    oracle = {(f"t{i}", a): draw(st.booleans()) for i in range(n) for a in (1, 2, 3)}
    limit = draw(st.none() | st.integers(1, 3))
    return WorkflowSpec("w", tuple(tasks), max_concurrency=limit), oracle


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows(), st.data())
def test_any_order_and_duplication_ends_where_the_clean_order_does(
    wf: tuple[WorkflowSpec, dict[tuple[str, int], bool]], data: st.DataObject
) -> None:
    spec, oracle = wf
    clean = World(spec, lambda t, a: oracle[(t, a)])
    clean.run_in_order()
    assert clean.state.done

    messy = World(spec, lambda t, a: oracle[(t, a)])
    for _ in range(2000):
        if not messy.pool:
            break
        index = data.draw(st.integers(0, len(messy.pool) - 1), label="deliver")
        messy.deliver(index, keep_copy=data.draw(st.booleans(), label="duplicate") and len(messy.pool) < 40)
    while messy.pool:  # whatever is left, in order
        messy.deliver(0)
    assert outcome(messy.state) == outcome(clean.state)
    assert sorted(set(messy.dispatches)) == sorted(clean.dispatches), "an attempt was dispatched twice"


def _judge_every_parent(state: RunState, child: TaskSpec, settled: TaskStatus) -> Verdict:
    return evaluate(child.trigger_rule, (state.tasks[p].status for p in child.depends_on))


def _run_and_revive(spec: WorkflowSpec, oracle: dict[tuple[str, int], bool], order: list[int]) -> World:
    """Deliver in `order` (then in turn), and while the run failed, ignore its first failed task and go on."""
    world = World(spec, lambda t, a: oracle[(t, a)])
    for i in order:
        if not world.pool:
            break
        world.deliver(i % len(world.pool))
    world.run_in_order()
    for _ in range(len(spec.tasks)):
        failed = [n for n, t in world.state.tasks.items() if t.status is TaskStatus.FAILED]
        if world.state.status is not RunStatus.FAILED or not failed:
            break
        world.pool.append(TaskIgnore(world.run_id, failed[0], world.now))
        world.run_in_order()
    return world


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows(), st.lists(st.integers(0, 1000), max_size=60))
def test_judging_a_child_as_its_parents_settle_decides_as_judging_all_its_parents(
    wf: tuple[WorkflowSpec, dict[tuple[str, int], bool]], order: list[int]
) -> None:
    spec, oracle = wf
    fast = _run_and_revive(spec, oracle, order)
    with mock.patch("jetdag.engine.run._judge", _judge_every_parent):
        slow = _run_and_revive(spec, oracle, order)
    assert outcome(fast.state) == outcome(slow.state)
    # The same attempts, not always in the same order: a child that one parent's skip decides is judged
    # when that parent settles, which can come later in the same step than judging all parents at each
    # one would have seen it (and the simulation then delivers results in that order).
    assert sorted(fast.dispatches) == sorted(slow.dispatches)


def test_a_wide_join_looks_at_each_parent_a_bounded_number_of_times() -> None:
    width = 2000
    parents = tuple(TaskSpec(f"p{i}", "noop", depends_on=("root",)) for i in range(width))
    spec = WorkflowSpec(
        "wide",
        (TaskSpec("root", "noop"), *parents, TaskSpec("join", "noop", depends_on=tuple(p.name for p in parents))),
    )
    world = World(spec, lambda t, a: True)
    looked = 0
    real = evaluate

    def counting(rule: TriggerRule, statuses: Any) -> Verdict:
        nonlocal looked
        statuses = list(statuses)
        looked += len(statuses)
        return real(rule, statuses)

    with mock.patch("jetdag.engine.run.evaluate", counting):
        world.run_in_order(limit=100_000)
    assert world.state.status is RunStatus.SUCCEEDED
    assert looked <= 2 * width, f"{looked} parent statuses looked at for a join of {width}"


@settings(max_examples=200, deadline=None)
@given(workflows(), st.data())
def test_applying_an_event_twice_leaves_the_run_where_once_would(
    wf: tuple[WorkflowSpec, dict[tuple[str, int], bool]], data: st.DataObject
) -> None:
    spec, oracle = wf
    world = World(spec, lambda t, a: oracle[(t, a)])
    for _ in range(data.draw(st.integers(0, 30))):
        if not world.pool:
            break
        world.deliver(data.draw(st.integers(0, len(world.pool) - 1)))
    if not world.pool:
        return
    event = world.pool[data.draw(st.integers(0, len(world.pool) - 1))]
    once = copy.deepcopy(world.state)
    first = decide(once, event, world.now + 1000)
    twice = copy.deepcopy(once)
    second = decide(twice, event, world.now + 2000)
    assert outcome(twice) == outcome(once)
    if first.defer_until is None:
        assert second.commands == [] and not second.changed


def test_decide_never_raises_on_a_broken_state() -> None:
    state = started(diamond())
    state.tasks["b"].status = TaskStatus.QUEUED
    state.tasks["b"].attempt = 1
    del state.spec.by_name["d"]  # type: ignore[union-attr]  # a corrupt definition: b's child is gone
    d = decide(state, TaskSucceeded("R", "b", 1, 2.0), now=2.0)
    assert state.status is RunStatus.FAILED and "internal error" in (state.error or "")
    assert d.changed
