"""decide() and a workflow's config: max_concurrency, the whole-run timeout, templates and `require`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from jetdag.engine.events import (
    DeadLetter,
    DispatchTask,
    RunDeadline,
    RunSubmitted,
    ScheduleDeadline,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
)
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.run import decide
from jetdag.engine.state import RunState, RunStatus, TaskStatus, new_run

JAN_2 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()


def start(spec: WorkflowSpec, params: dict[str, Any] | None = None, **run_kw: Any) -> tuple[RunState, list[Any]]:
    state = new_run("R", spec.name, 1, spec, params or {}, 0.0, **run_kw)
    return state, decide(state, RunSubmitted("R", spec.name, 1, {}, 0.0), now=1.0).commands


def dispatched(commands: list[Any]) -> list[str]:
    return [c.task for c in commands if isinstance(c, DispatchTask)]


def succeed(state: RunState, task: str, result: Any = None, now: float = 2.0) -> list[Any]:
    attempt = state.tasks[task].attempt
    return decide(state, TaskSucceeded("R", task, attempt, now, "w", result), now=now).commands


def fan_out(limit: int | None, priorities: tuple[int, ...] = (5, 5, 5, 5)) -> WorkflowSpec:
    children = tuple(TaskSpec(f"c{i}", "noop", depends_on=("root",), priority=p) for i, p in enumerate(priorities))
    return WorkflowSpec("fan", (TaskSpec("root", "noop"), *children), max_concurrency=limit)


def test_max_concurrency_holds_ready_tasks_until_a_slot_frees() -> None:
    state, _ = start(fan_out(2))
    assert dispatched(succeed(state, "root")) == ["c0", "c1"]
    assert state.ready == ["c2", "c3"] and state.active == 2
    assert dispatched(succeed(state, "c0")) == ["c2"]
    assert dispatched(succeed(state, "c1")) == ["c3"]
    succeed(state, "c2")
    succeed(state, "c3")
    assert state.status is RunStatus.SUCCEEDED and state.active == 0 and not state.ready


def test_held_tasks_go_highest_priority_first() -> None:
    state, _ = start(fan_out(1, priorities=(1, 2, 9, 5)))
    assert dispatched(succeed(state, "root")) == ["c0"]
    assert dispatched(succeed(state, "c0")) == ["c2"]
    assert dispatched(succeed(state, "c2")) == ["c3"]


def test_a_retrying_task_frees_its_slot_and_waits_for_one_again() -> None:
    state, _ = start(fan_out(1, priorities=(5, 5)))
    succeed(state, "root")
    d = decide(state, TaskFailed("R", "c0", 1, 3.0, "boom"), now=3.0)
    assert dispatched(d.commands) == ["c1"], "the slot c0 held goes to the next ready task"
    assert state.tasks["c0"].status is TaskStatus.RETRYING


def test_the_run_deadline_cancels_what_is_left_and_fails_the_run() -> None:
    spec = WorkflowSpec("slow", (TaskSpec("a", "noop"), TaskSpec("b", "noop", depends_on=("a",))), timeout=60.0)
    state, commands = start(spec)
    assert ScheduleDeadline(61.0) in commands
    early = decide(state, RunDeadline("R", 1.0, 61.0), now=30.0)
    assert early.defer_until == 61.0 and state.status is RunStatus.RUNNING
    decide(state, TaskStarted("R", "a", 1, 2.0, "w"), now=2.0)
    decide(state, RunDeadline("R", 1.0, 61.0), now=61.0)
    assert state.status is RunStatus.FAILED
    assert state.error == "run timed out: not finished within its timeout of 1m"
    assert {n: t.status for n, t in state.tasks.items()} == {"a": TaskStatus.CANCELLED, "b": TaskStatus.CANCELLED}
    late = decide(state, TaskSucceeded("R", "a", 1, 62.0, "w"), now=62.0)
    assert not late.changed and state.tasks["a"].status is TaskStatus.CANCELLED


def test_a_deadline_after_the_run_finished_changes_nothing() -> None:
    spec = WorkflowSpec("quick", (TaskSpec("a", "noop"),), timeout=60.0)
    state, _ = start(spec)
    succeed(state, "a")
    assert not decide(state, RunDeadline("R", 1.0, 61.0), now=61.0).changed
    assert state.status is RunStatus.SUCCEEDED


def test_payload_and_template_render_at_dispatch() -> None:
    spec = WorkflowSpec(
        "report",
        (
            TaskSpec("extract", "noop"),
            TaskSpec(
                "load",
                "command",
                payload={"argv": ["load", "{param:table}", "{result:extract.rows}"], "n": "{param:n}"},
                template="?day={yyyy}-{mm}-{dd}&file={meta:file}",
                depends_on=("extract",),
                job="daily",
            ),
        ),
        params={"table": "sales", "n": 3},
    )
    state, _ = start(spec, logical_time=JAN_2, meta={"file": "/in/a.csv"})
    [cmd] = succeed(state, "extract", {"rows": 42})
    assert isinstance(cmd, DispatchTask)
    assert cmd.payload == {"argv": ["load", "sales", 42], "n": 3}, "a whole-value key keeps its type"
    assert cmd.info == "?day=2026-01-02&file=/in/a.csv" and cmd.job == "daily"
    assert spec.tasks[1].payload["argv"][1] == "{param:table}", "the spec itself is never changed"


def test_a_template_that_cannot_render_fails_the_task_for_good() -> None:
    spec = WorkflowSpec(
        "report",
        (
            TaskSpec("extract", "noop"),
            TaskSpec("load", "noop", payload="{result:extract.rows}", depends_on=("extract",)),
        ),
    )
    state, _ = start(spec)
    commands = succeed(state, "extract", {"count": 1})
    [dead] = [c for c in commands if isinstance(c, DeadLetter)]
    assert dead.task == "load" and dead.attempt == 1
    assert dead.error == "TemplateError: template key '{result:extract.rows}': task 'extract' has no result key 'rows'"
    assert state.tasks["load"].status is TaskStatus.FAILED and state.status is RunStatus.FAILED


def test_require_skips_a_task_whose_value_is_missing() -> None:
    spec = WorkflowSpec(
        "files",
        (
            TaskSpec("parent", "noop"),
            TaskSpec("child", "noop", depends_on=("parent",), require=("{meta:file}",)),
            TaskSpec("after", "noop", depends_on=("child",)),
        ),
    )
    state, _ = start(spec)
    assert dispatched(succeed(state, "parent")) == []
    assert state.tasks["child"].status is TaskStatus.SKIPPED and state.tasks["after"].status is TaskStatus.SKIPPED
    assert state.status is RunStatus.SUCCEEDED

    state, _ = start(spec, meta={"file": "/in/a.csv"})
    assert dispatched(succeed(state, "parent")) == ["child"]
