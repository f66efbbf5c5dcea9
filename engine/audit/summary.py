"""A run's summary from its DAG and attempt timings: per-task times, stages, critical path, failure cause.

A pure function of numbers (no IO): the audit log supplies the edges and the attempts, a test supplies them
by hand. All times are epoch seconds.

Per task, over its attempts (an attempt is one `AttemptTiming`; several records with the same attempt
number keep the last one given):

- `wait_s`: the sum of `started_at - queued_at` (time spent queued), over attempts where both are known.
- `run_s`: the sum of `finished_at - started_at` (time spent running), over attempts where both are known.
  Both are None when no attempt has the two times. A negative difference (clock skew between hosts) counts
  as 0.
- `first_queued_at`: the earliest known `queued_at`.
- `finished_at`: the last attempt's `finished_at`, once the task is done (succeeded, failed, skipped,
  cancelled, ignored); None while it is not (waiting, queued, running, retrying) or when that time is missing.
- `elapsed_s`: `finished_at - first_queued_at`; it includes the backoff between attempts. None when either
  is unknown, e.g. for a task still running.
- `retries`: `attempts - 1` (0 for a task that never ran).
- `depth`: 0 for a root, else 1 + the largest depth of its parents.

The task's status is `task_status[task]`; a task missing there takes its last attempt's status, or
`waiting` when it has none. Attempts of tasks that are not in `parents` are ignored.

**Stages** group the tasks by depth (roots are stage 0), each in `parents` order. A stage starts at the
earliest `first_queued_at` of its tasks and finishes at the latest `finished_at`; its `finished_at` is None
while any of its tasks is not done, and `span_s` is None when either end is unknown.

**Critical path**: the path through the DAG, from a root to a sink (a task nobody depends on), with the
largest sum of task weights, where a task's weight is its `run_s` (0 for a task that never ran: skipped,
waiting). It is how long the run would take with unlimited workers and no queueing; with known durations it
is exact. It is computed in O(V+E) by dynamic programming in `parents` order: the best path ending at a
task is its weight plus the best path ending at one of its parents. Ties are broken deterministically by
`parents` order: among parents (and, at the end, among sinks) whose best paths weigh the same, the one
listed first in `parents` wins. `critical_path_s` is the sum of the weights along the path; an empty DAG
has an empty path of 0 seconds.

**Failure cause**: among the tasks whose status is `failed`, the one whose last attempt finished first
(a failed task without a finish time comes after those with one; ties go to `parents` order); `failure` is
that attempt's error. Tasks skipped because of it are not causes, since they are not `failed`. Both are None
when no task failed: a run that timed out or was cancelled, whose tasks were cancelled rather than failed,
has no failed task.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jetdag.engine.state import TASK_DONE


@dataclass(frozen=True, slots=True)
class AttemptTiming:
    """One attempt of one task, as the audit log's `attempts` table holds it."""

    task: str
    attempt: int
    status: str
    """The attempt's last status: queued, running, succeeded, failed, retrying, cancelled, ..."""
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    worker: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TaskSummary:
    task: str
    status: str
    attempts: int
    retries: int
    wait_s: float | None
    run_s: float | None
    elapsed_s: float | None
    first_queued_at: float | None
    finished_at: float | None
    depth: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "status": self.status,
            "attempts": self.attempts,
            "retries": self.retries,
            "wait_s": self.wait_s,
            "run_s": self.run_s,
            "elapsed_s": self.elapsed_s,
            "first_queued_at": self.first_queued_at,
            "finished_at": self.finished_at,
            "depth": self.depth,
        }


@dataclass(frozen=True, slots=True)
class Stage:
    depth: int
    tasks: tuple[str, ...]
    started_at: float | None
    finished_at: float | None
    span_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "tasks": list(self.tasks),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "span_s": self.span_s,
        }


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    status: str
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    tasks: tuple[TaskSummary, ...]
    """In `parents` order."""
    stages: tuple[Stage, ...]
    critical_path: tuple[str, ...]
    """Task names from a root to a sink."""
    critical_path_s: float
    total_retries: int
    failed_task: str | None
    failure: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: only dicts, lists, strs, ints, floats and None."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "tasks": [t.to_dict() for t in self.tasks],
            "stages": [s.to_dict() for s in self.stages],
            "critical_path": list(self.critical_path),
            "critical_path_s": self.critical_path_s,
            "total_retries": self.total_retries,
            "failed_task": self.failed_task,
            "failure": self.failure,
        }


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def _sum_spans(pairs: Iterable[tuple[float | None, float | None]]) -> float | None:
    spans = [s for s in (_span(a, b) for a, b in pairs) if s is not None]
    return sum(spans, 0.0) if spans else None


def _depths(parents: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each task's depth; ValueError when a parent is unknown or not listed before its child."""
    depth: dict[str, int] = {}
    for task, ups in parents.items():
        for up in ups:
            if up not in depth:
                where = "is not a task" if up not in parents else "is not listed before it"
                raise ValueError(f"task {task!r} depends on {up!r}, which {where}: parents must be in dependency order")
        depth[task] = 1 + max((depth[up] for up in ups), default=-1)
    return depth


def _critical_path(parents: Mapping[str, Sequence[str]], weight: Mapping[str, float]) -> tuple[tuple[str, ...], float]:
    position = {task: i for i, task in enumerate(parents)}
    best: dict[str, float] = {}
    via: dict[str, str | None] = {}
    has_child: set[str] = set()
    for task, ups in parents.items():
        prev: str | None = None
        for up in sorted(set(ups), key=position.__getitem__):
            has_child.add(up)
            if prev is None or best[up] > best[prev]:
                prev = up
        best[task] = weight[task] + (best[prev] if prev is not None else 0.0)
        via[task] = prev
    end: str | None = None
    for task in parents:
        if task not in has_child and (end is None or best[task] > best[end]):
            end = task
    if end is None:
        return (), 0.0
    path: list[str] = []
    node: str | None = end
    while node is not None:
        path.append(node)
        node = via[node]
    return tuple(reversed(path)), best[end]


def summarize(
    run_id: str,
    status: str,
    started_at: float | None,
    finished_at: float | None,
    parents: Mapping[str, Sequence[str]],
    task_status: Mapping[str, str],
    attempts: Iterable[AttemptTiming],
) -> RunSummary:
    """The summary of one run; `parents` maps every task to its upstream tasks, in dependency order."""
    depth = _depths(parents)
    by_task: dict[str, dict[int, AttemptTiming]] = {task: {} for task in parents}
    for a in attempts:
        if a.task in by_task:
            by_task[a.task][a.attempt] = a

    tasks: list[TaskSummary] = []
    last_attempt: dict[str, AttemptTiming | None] = {}
    for task in parents:
        tries = [by_task[task][n] for n in sorted(by_task[task])]
        last = tries[-1] if tries else None
        last_attempt[task] = last
        state = task_status.get(task) or (last.status if last else "waiting")
        queued = [a.queued_at for a in tries if a.queued_at is not None]
        first_queued = min(queued) if queued else None
        done_at = last.finished_at if last is not None and state in TASK_DONE else None
        tasks.append(
            TaskSummary(
                task=task,
                status=state,
                attempts=len(tries),
                retries=max(0, len(tries) - 1),
                wait_s=_sum_spans((a.queued_at, a.started_at) for a in tries),
                run_s=_sum_spans((a.started_at, a.finished_at) for a in tries),
                elapsed_s=_span(first_queued, done_at),
                first_queued_at=first_queued,
                finished_at=done_at,
                depth=depth[task],
            )
        )

    stages: list[Stage] = []
    for d in sorted(set(depth.values())):
        members = [t for t in tasks if t.depth == d]
        starts = [t.first_queued_at for t in members if t.first_queued_at is not None]
        ends = [t.finished_at for t in members if t.finished_at is not None]
        begin = min(starts) if starts else None
        end = max(ends) if ends and all(t.status in TASK_DONE for t in members) else None
        stages.append(Stage(d, tuple(t.task for t in members), begin, end, _span(begin, end)))

    path, path_s = _critical_path(parents, {t.task: t.run_s or 0.0 for t in tasks})

    causes = [t for t in tasks if t.status == "failed"]
    first = min(causes, key=lambda t: math.inf if t.finished_at is None else t.finished_at, default=None)
    failed_task = first.task if first is not None else None
    cause_attempt = last_attempt[failed_task] if failed_task is not None else None

    return RunSummary(
        run_id=run_id,
        status=status,
        started_at=started_at,
        finished_at=finished_at,
        duration_s=_span(started_at, finished_at),
        tasks=tuple(tasks),
        stages=tuple(stages),
        critical_path=path,
        critical_path_s=path_s,
        total_retries=sum(t.retries for t in tasks),
        failed_task=failed_task,
        failure=cause_attempt.error if cause_attempt is not None else None,
    )
