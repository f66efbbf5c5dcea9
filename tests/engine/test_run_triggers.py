"""decide() for what triggers add: runs that begin at a phase, and runs held by `max_active_runs` (no NATS)."""

from __future__ import annotations

import msgpack
import pytest

from jetdag.engine.errors import ControlError
from jetdag.engine.events import (
    DispatchTask,
    ReleaseSlot,
    RequestSlot,
    RunAdmitted,
    RunCancel,
    RunHoldCheck,
    RunPause,
    RunSubmitted,
    ScheduleHoldCheck,
    TaskSucceeded,
)
from jetdag.engine.model import TaskSpec, TriggerRule, WorkflowSpec
from jetdag.engine.run import HOLD_CHECK, decide, rerun_done
from jetdag.engine.state import RunState, RunStatus, TaskStatus, new_run

# Two flowlord phases, each with its child: a cron fire starts at `extract`, a file fire at `ingest`.
PHASES = WorkflowSpec(
    "phases",
    (
        TaskSpec("extract", "noop"),
        TaskSpec("load", "noop", depends_on=("extract",)),
        TaskSpec("ingest", "noop"),
        TaskSpec("index", "noop", depends_on=("ingest",)),
        TaskSpec("report", "noop", depends_on=("load", "index"), trigger_rule=TriggerRule.ALL_DONE),
    ),
)


def dispatched(decision: object) -> list[str]:
    return [c.task for c in decision.commands if isinstance(c, DispatchTask)]  # type: ignore[attr-defined]


def test_a_run_that_begins_at_a_phase_skips_what_is_not_downstream_of_it() -> None:
    state = new_run("R", "phases", 1, PHASES, {}, 0.0)
    d = decide(state, RunSubmitted("R", "phases", 1, {}, 0.0, start=["extract"], trigger="cron:extract"), now=1.0)
    assert dispatched(d) == ["extract"]
    assert state.trigger == "cron:extract" and state.start == ["extract"]
    assert {n for n, t in state.tasks.items() if t.status is TaskStatus.SKIPPED} == {"ingest", "index"}
    skipped = next(t for t in d.transitions if t.task == "ingest")
    assert skipped.error is not None and "not downstream of extract" in skipped.error
    assert dispatched(decide(state, TaskSucceeded("R", "extract", 1, 2.0), now=2.0)) == ["load"]
    # `report` joins load and the skipped index with all_done: it runs once load is done.
    assert dispatched(decide(state, TaskSucceeded("R", "load", 1, 3.0), now=3.0)) == ["report"]
    decide(state, TaskSucceeded("R", "report", 1, 4.0), now=4.0)
    assert state.status is RunStatus.SUCCEEDED


def test_a_start_the_definition_no_longer_has_starts_at_the_roots() -> None:
    state = new_run("R", "phases", 1, PHASES, {}, 0.0)
    d = decide(state, RunSubmitted("R", "phases", 1, {}, 0.0, start=["gone"]), now=1.0)
    assert sorted(dispatched(d)) == ["extract", "ingest"]


def test_a_rerun_of_a_phase_run_reruns_within_its_reach() -> None:
    tasks = {
        "extract": {"status": "succeeded", "result": 1},
        "load": {"status": "failed"},
        "ingest": {"status": "skipped"},
        "index": {"status": "skipped"},
        "report": {"status": "skipped"},
    }
    assert rerun_done("R", PHASES, tasks, start=["extract"]) == {"extract": 1}
    with pytest.raises(ControlError, match="did not run 'ingest'"):
        rerun_done("R", PHASES, tasks, from_task="ingest", start=["extract"])


GATED = WorkflowSpec("gated", (TaskSpec("a", "noop"),), max_active_runs=2)


def held() -> RunState:
    state = new_run("R", "gated", 1, GATED, {}, 0.0)
    d = decide(state, RunSubmitted("R", "gated", 1, {}, 0.0), now=1.0)
    assert state.held and state.status is RunStatus.PENDING and state.started_at is None
    assert d.changed and dispatched(d) == []
    assert RequestSlot() in d.commands and ScheduleHoldCheck(1.0 + HOLD_CHECK) in d.commands
    return state


def test_a_gated_run_waits_pending_until_admitted() -> None:
    state = held()
    again = decide(state, RunSubmitted("R", "gated", 1, {}, 0.0), now=2.0)
    assert not again.changed and again.commands == []  # a redelivered submission asks nothing twice
    d = decide(state, RunAdmitted("R", 3.0), now=3.0)
    assert not state.held and state.status is RunStatus.RUNNING and dispatched(d) == ["a"]
    assert not decide(state, RunAdmitted("R", 4.0), now=4.0).changed  # admitted twice: once
    d = decide(state, TaskSucceeded("R", "a", 1, 5.0), now=5.0)
    assert state.status is RunStatus.SUCCEEDED and ReleaseSlot() in d.commands


def test_a_held_run_asks_again_when_its_timer_is_due() -> None:
    state = held()
    early = decide(state, RunHoldCheck("R", 1.0, due=31.0), now=10.0)
    assert early.defer_until == 31.0 and early.commands == []
    due = decide(state, RunHoldCheck("R", 1.0, due=31.0), now=31.0)
    assert not due.changed  # nothing to save: only commands
    assert RequestSlot(recheck=True) in due.commands and ScheduleHoldCheck(31.0 + HOLD_CHECK) in due.commands
    decide(state, RunAdmitted("R", 32.0), now=32.0)
    assert decide(state, RunHoldCheck("R", 1.0, due=61.0), now=61.0).commands == []  # started: the timer stops


def test_a_held_run_cancelled_leaves_the_line_and_one_paused_starts_paused() -> None:
    state = held()
    d = decide(state, RunCancel("R", 2.0, "no longer needed", "ops"), now=2.0)
    assert state.status is RunStatus.CANCELLED and not state.held and ReleaseSlot() in d.commands
    assert not decide(state, RunAdmitted("R", 3.0), now=3.0).changed

    paused = held()
    decide(paused, RunPause("R", 2.0), now=2.0)
    d = decide(paused, RunAdmitted("R", 3.0), now=3.0)
    assert paused.status is RunStatus.PAUSED and dispatched(d) == []


def test_a_held_rerun_keeps_its_kept_tasks_until_it_starts() -> None:
    spec = WorkflowSpec("gated", (TaskSpec("a", "noop"), TaskSpec("b", "noop", depends_on=("a",))), max_active_runs=1)
    state = new_run("R", "gated", 1, spec, {}, 0.0)
    decide(state, RunSubmitted("R", "gated", 1, {}, 0.0, done={"a": {"rows": 3}}, rerun_of="OLD"), now=1.0)
    assert state.seed == {"a": {"rows": 3}} and state.rerun_of == "OLD"
    again = RunState.from_dict(msgpack.unpackb(state.packed()), spec)
    assert again.held and again.seed == {"a": {"rows": 3}}
    d = decide(again, RunAdmitted("R", 2.0), now=2.0)
    assert dispatched(d) == ["b"] and again.tasks["a"].result == {"rows": 3} and again.seed is None
