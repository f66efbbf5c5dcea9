"""Run summaries: per-task times, stages, the critical path and the task that caused a failure."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetdag.engine.audit.summary import AttemptTiming, RunSummary, Stage, TaskSummary, summarize

T0 = 1_700_000_000.0

# a -> (b, c) -> d, plus a side branch a -> e. Durations: a=2, b=5, c=1, d=3, e=4.
DIAMOND: dict[str, list[str]] = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["a"]}


def attempt(
    task: str,
    n: int,
    queued: float | None,
    started: float | None,
    finished: float | None,
    status: str = "succeeded",
    error: str | None = None,
) -> AttemptTiming:
    def at(t: float | None) -> float | None:
        return None if t is None else T0 + t

    return AttemptTiming(task, n, status, at(queued), at(started), at(finished), worker="w1", error=error)


def diamond() -> RunSummary:
    attempts = [
        attempt("a", 1, 0, 0.5, 2.5),  # waits 0.5, runs 2
        attempt("b", 1, 2.5, 3, 8),  # waits 0.5, runs 5
        # c fails once after 0.5s, backs off 1.5s, waits 0.5s, then runs 0.5s: run_s 1, elapsed 3
        attempt("c", 1, 2.5, 2.5, 3, status="retrying", error="boom"),
        attempt("c", 2, 4.5, 5, 5.5),
        attempt("d", 1, 8, 8.5, 11.5),  # runs 3
        attempt("e", 1, 2.5, 4, 8),  # waits 1.5, runs 4
    ]
    status = dict.fromkeys(DIAMOND, "succeeded")
    return summarize("R1", "succeeded", T0, T0 + 11.5, DIAMOND, status, attempts)


def task(summary: RunSummary, name: str) -> TaskSummary:
    return next(t for t in summary.tasks if t.task == name)


def test_the_critical_path_of_a_diamond_is_its_heaviest_root_to_sink_path() -> None:
    s = diamond()
    assert s.critical_path == ("a", "b", "d")
    assert s.critical_path_s == 10.0
    assert s.duration_s == 11.5
    assert [t.task for t in s.tasks] == ["a", "b", "c", "d", "e"]


def test_stages_group_tasks_by_depth() -> None:
    s = diamond()
    assert s.stages == (
        Stage(0, ("a",), T0, T0 + 2.5, 2.5),
        Stage(1, ("b", "c", "e"), T0 + 2.5, T0 + 8, 5.5),
        Stage(2, ("d",), T0 + 8, T0 + 11.5, 3.5),
    )
    assert [t.depth for t in s.tasks] == [0, 1, 1, 2, 1]


def test_per_task_wait_run_and_elapsed() -> None:
    s = diamond()
    assert task(s, "a") == TaskSummary("a", "succeeded", 1, 0, 0.5, 2.0, 2.5, T0, T0 + 2.5, 0)
    assert task(s, "b") == TaskSummary("b", "succeeded", 1, 0, 0.5, 5.0, 5.5, T0 + 2.5, T0 + 8, 1)
    assert task(s, "e") == TaskSummary("e", "succeeded", 1, 0, 1.5, 4.0, 5.5, T0 + 2.5, T0 + 8, 1)


def test_a_retried_task_sums_its_attempts_and_its_elapsed_time_includes_the_backoff() -> None:
    c = task(diamond(), "c")
    assert (c.attempts, c.retries) == (2, 1)
    assert c.run_s == 1.0  # 0.5 + 0.5
    assert c.wait_s == 0.5  # 0 + 0.5
    assert c.elapsed_s == 3.0  # queued at 2.5, finished at 5.5: the 1.75s backoff is in it
    assert diamond().total_retries == 1


def test_ties_go_to_the_task_listed_first() -> None:
    parents: dict[str, list[str]] = {"a": [], "b": ["a"], "c": ["a"], "d": ["c", "b"]}
    attempts = [attempt(t, 1, 0, 0, 1) for t in parents]
    s = summarize("R", "succeeded", T0, T0 + 3, parents, dict.fromkeys(parents, "succeeded"), attempts)
    assert s.critical_path == ("a", "b", "d")
    assert s.critical_path_s == 3.0


def test_the_failure_cause_is_the_failed_task_that_finished_first() -> None:
    parents: dict[str, list[str]] = {"a": [], "b": ["a"], "c": ["a"], "d": ["b"], "e": ["c"]}
    status = {"a": "succeeded", "b": "failed", "c": "failed", "d": "skipped", "e": "skipped"}
    attempts = [
        attempt("a", 1, 0, 0, 1),
        attempt("b", 1, 1, 1, 2, status="retrying", error="b first try"),
        attempt("b", 2, 3, 3, 9, status="failed", error="b: disk full"),
        attempt("c", 1, 1, 1, 5, status="failed", error="c: bad input"),
    ]
    s = summarize("R", "failed", T0, T0 + 9, parents, status, attempts)
    assert (s.failed_task, s.failure) == ("c", "c: bad input")
    assert task(s, "d").run_s is None and task(s, "d").attempts == 0 and task(s, "d").depth == 2
    assert s.critical_path == ("a", "b", "d")  # b ran 1 + 6 s; skipped d weighs nothing
    assert s.critical_path_s == 8.0


def test_skipped_descendants_are_not_causes_and_ties_go_to_parents_order() -> None:
    parents: dict[str, list[str]] = {"x": [], "y": [], "z": ["x", "y"]}
    status = {"x": "failed", "y": "failed", "z": "skipped"}
    attempts = [
        attempt("y", 1, 0, 0, 4, status="failed", error="y broke"),
        attempt("x", 1, 0, 1, 4, status="failed", error="x broke"),
    ]
    s = summarize("R", "failed", T0, T0 + 4, parents, status, attempts)
    assert (s.failed_task, s.failure) == ("x", "x broke")


def test_a_cancelled_run_has_no_failed_task() -> None:
    parents: dict[str, list[str]] = {"a": [], "b": ["a"]}
    attempts = [attempt("a", 1, 0, 0, 1), attempt("b", 1, 1, 1, 30, status="cancelled", error="deadline")]
    s = summarize("R", "cancelled", T0, T0 + 30, parents, {"a": "succeeded", "b": "cancelled"}, attempts)
    assert (s.failed_task, s.failure) == (None, None)


def test_missing_times_give_none_where_unknown() -> None:
    parents: dict[str, list[str]] = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    status = {"a": "succeeded", "b": "running", "c": "queued", "d": "waiting"}
    attempts = [attempt("a", 1, 0, 1, 3), attempt("b", 1, 3, 4, None, status="running"), attempt("c", 1, 3, None, None)]
    s = summarize("R", "running", T0, None, parents, status, attempts)
    assert s.duration_s is None
    b, c, d = task(s, "b"), task(s, "c"), task(s, "d")
    assert (b.wait_s, b.run_s, b.elapsed_s, b.finished_at, b.first_queued_at) == (1.0, None, None, None, T0 + 3)
    assert (c.wait_s, c.run_s, c.elapsed_s) == (None, None, None)
    assert (d.attempts, d.retries, d.wait_s, d.run_s, d.first_queued_at) == (0, 0, None, None, None)
    assert s.stages[1] == Stage(1, ("b", "c"), T0 + 3, None, None)
    assert s.stages[2] == Stage(2, ("d",), None, None, None)
    assert s.critical_path == ("a", "b", "d")
    assert s.critical_path_s == 2.0
    assert (s.failed_task, s.failure) == (None, None)
    json.dumps(s.to_dict())


def test_a_task_missing_from_the_statuses_takes_its_last_attempts() -> None:
    s = summarize("R", "running", T0, None, {"a": [], "b": []}, {}, [attempt("a", 1, 0, 0, 1, status="succeeded")])
    assert [t.status for t in s.tasks] == ["succeeded", "waiting"]


def test_parents_must_be_in_dependency_order() -> None:
    with pytest.raises(ValueError, match="'b', which is not listed before it"):
        summarize("R", "running", None, None, {"a": ["b"], "b": []}, {}, [])
    with pytest.raises(ValueError, match="'q', which is not a task"):
        summarize("R", "running", None, None, {"a": ["q"]}, {}, [])


def test_an_empty_run() -> None:
    s = summarize("R", "succeeded", T0, T0, {}, {}, [])
    assert (s.critical_path, s.critical_path_s, s.stages, s.tasks) == ((), 0.0, (), ())


def test_to_dict_round_trips_through_json() -> None:
    d = diamond().to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["critical_path"] == ["a", "b", "d"]
    assert d["tasks"][2]["retries"] == 1
    assert d["stages"][1]["tasks"] == ["b", "c", "e"]


@st.composite
def dags(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, float]]:
    n = draw(st.integers(1, 8))
    names = [f"t{i}" for i in range(n)]
    parents = {
        name: draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else [] for i, name in enumerate(names)
    }
    weights = {name: draw(st.floats(0, 100, allow_nan=False, allow_infinity=False)) for name in names}
    return parents, weights


def all_paths(parents: dict[str, list[str]]) -> list[list[str]]:
    children: dict[str, list[str]] = {t: [] for t in parents}
    for t, ups in parents.items():
        for up in ups:
            children[up].append(t)

    def walk(node: str) -> list[list[str]]:
        if not children[node]:
            return [[node]]
        return [[node, *rest] for child in children[node] for rest in walk(child)]

    return [p for root, ups in parents.items() if not ups for p in walk(root)]


@given(dags())
def test_the_critical_path_is_the_heaviest_path(dag: tuple[dict[str, list[str]], dict[str, float]]) -> None:
    parents, weights = dag
    attempts = [AttemptTiming(t, 1, "succeeded", 0.0, 0.0, w) for t, w in weights.items()]
    s = summarize("R", "succeeded", 0.0, None, parents, dict.fromkeys(parents, "succeeded"), attempts)

    assert s.critical_path_s == max(sum(weights[t] for t in path) for path in all_paths(parents))
    path = s.critical_path
    assert not parents[path[0]]  # starts at a root
    assert all(path[-1] not in ups for ups in parents.values())  # ends at a sink
    assert all(parent in parents[child] for parent, child in pairwise(path))
    assert sum(weights[t] for t in path) == s.critical_path_s
