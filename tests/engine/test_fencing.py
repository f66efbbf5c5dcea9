"""Worker recovery without NATS: a reaped attempt is an ordinary failure, late results of it change nothing,
a redelivered task message is stale once its attempt is, and heartbeats read as the reaper reads them."""

from __future__ import annotations

import copy
from typing import Any

from jetdag.engine.events import DeadLetter, DispatchTask, RunSubmitted, ScheduleDue, TaskDue, TaskFailed, TaskSucceeded
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from jetdag.engine.run import decide
from jetdag.engine.state import RunState, RunStatus, TaskStatus, new_run
from jetdag.engine.workers import DEAD_AFTER_BEATS, HEARTBEAT, dead_after, running_tasks, superseded, worker_view

REAPED = "worker w1 on h1 presumed dead (no heartbeat for 15.2s)"
SPEC = WorkflowSpec(
    "one",
    (TaskSpec("a", "noop"), TaskSpec("b", "noop", depends_on=("a",))),
    retry=RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0),
)


def started() -> RunState:
    state = new_run("R", SPEC.name, 1, SPEC, {}, 0.0)
    decide(state, RunSubmitted("R", SPEC.name, 1, {}, 0.0), now=1.0)
    return state


def reap_and_redispatch(state: RunState) -> None:
    """Attempt 1 of `a` is reaped (a retryable failure from the engine) and attempt 2 is dispatched."""
    d = decide(state, TaskFailed("R", "a", 1, 20.0, REAPED, "w1", retryable=True), now=20.0)
    assert d.commands == [ScheduleDue("a", 2, 21.0)]
    d = decide(state, TaskDue("R", "a", 2, 20.0, 21.0), now=21.0)
    assert [(c.task, c.attempt) for c in d.commands if isinstance(c, DispatchTask)] == [("a", 2)]


def test_a_late_success_of_the_reaped_attempt_changes_nothing() -> None:
    state = started()
    reap_and_redispatch(state)
    before = copy.deepcopy(state)
    late = decide(state, TaskSucceeded("R", "a", 1, 22.0, "w1", {"from": "the frozen worker"}), now=22.0)
    assert (late.commands, late.transitions, late.defer_until) == ([], [], None)
    assert late.reason == "stale or duplicate"
    assert state.to_dict() == before.to_dict()
    assert (state.tasks["a"].status, state.tasks["a"].attempt) == (TaskStatus.QUEUED, 2)

    decide(state, TaskSucceeded("R", "a", 2, 23.0, "w2", {"from": "the second worker"}), now=23.0)
    assert state.tasks["a"].result == {"from": "the second worker"}
    # ...and once the newer attempt has won, the old one's result still cannot take its place.
    decide(state, TaskSucceeded("R", "a", 1, 24.0, "w1", {"from": "the frozen worker"}), now=24.0)
    assert (state.tasks["a"].result, state.tasks["a"].worker) == ({"from": "the second worker"}, "w2")


def test_a_reap_after_the_real_result_changes_nothing() -> None:
    state = started()
    decide(state, TaskSucceeded("R", "a", 1, 5.0, "w1", 42), now=5.0)
    before = copy.deepcopy(state)
    d = decide(state, TaskFailed("R", "a", 1, 20.0, REAPED, "w1"), now=20.0)
    assert not d.changed and d.commands == []
    assert state.to_dict() == before.to_dict()


def test_a_reap_counts_against_max_attempts() -> None:
    state = started()
    reap_and_redispatch(state)
    d = decide(state, TaskFailed("R", "a", 2, 30.0, REAPED.replace("w1", "w2"), "w2"), now=30.0)
    assert any(isinstance(c, DeadLetter) for c in d.commands)
    assert state.status is RunStatus.FAILED and "presumed dead" in (state.error or "")


def snapshot(run: str = "running", status: str = "queued", attempt: int = 2) -> dict[str, Any]:
    return {"status": run, "tasks": {"a": {"status": status, "attempt": attempt}}}


def test_a_redelivered_attempt_is_stale_once_a_newer_one_exists_or_it_is_settled() -> None:
    assert superseded(snapshot(), "a", 1) == "attempt 2 is the current one"
    assert superseded(snapshot(run="succeeded"), "a", 2) == "the run is already succeeded"
    assert superseded(snapshot(status="retrying"), "a", 2) == "attempt 2 is already retrying"
    assert superseded(snapshot(status="succeeded"), "a", 2) == "attempt 2 is already succeeded"
    # The attempt is still the current one: a plain redelivery (its worker died unnoticed) must run.
    assert superseded(snapshot(status="queued"), "a", 2) is None
    assert superseded(snapshot(status="running"), "a", 2) is None
    assert superseded(snapshot(), "unknown", 1) is None


def test_the_reaper_trusts_only_well_formed_running_entries() -> None:
    good = {"run": "R1", "task": "a", "attempt": 1, "reply": "jd.evt.3.R1", "started": 5.0}
    info = {
        "running": [
            good,
            {**good, "reply": "jd.evt.3.OTHER"},  # someone else's run
            {**good, "reply": "jd.task.default.5"},  # not an event subject
            {**good, "attempt": 0},
            {**good, "attempt": True},
            "junk",
        ]
    }
    assert [t.to_dict() for t in running_tasks(info)] == [good]
    assert running_tasks({"running": 3}) == []


def test_a_worker_is_presumed_dead_after_three_of_its_own_beats() -> None:
    assert DEAD_AFTER_BEATS == 3
    assert dead_after({}) == 3 * HEARTBEAT
    assert abs(dead_after({"interval": 0.2}) - 0.6) < 1e-9
    assert dead_after({"interval": 0.0001}) == 3 * 0.05  # floored
    info = {"id": "w", "host": "h", "pid": 1, "queues": ["q"], "interval": 1.0, "beat": 100.0, "running": []}
    assert worker_view(info, 102.9)["state"] == "alive"
    view = worker_view(info, 103.5)
    assert (view["state"], view["alive"], view["age"], view["running"]) == ("presumed dead", False, 3.5, 0)
