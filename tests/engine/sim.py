"""A tiny deterministic world around decide(): tasks "run" by an oracle, messages delivered in any order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jetdag.engine.events import (
    DispatchTask,
    Event,
    RunSubmitted,
    ScheduleDue,
    TaskDue,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
)
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.rules import Verdict, evaluate
from jetdag.engine.run import decide
from jetdag.engine.state import TASK_ACTIVE, TASK_DONE, RunState, new_run

Oracle = Callable[[str, int], bool]  # (task, attempt) -> succeeds?


@dataclass
class World:
    spec: WorkflowSpec
    oracle: Oracle
    run_id: str = "R1"
    now: float = 1000.0
    state: RunState = field(init=False)
    pool: list[Event] = field(default_factory=list)
    dispatches: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = new_run(self.run_id, self.spec.name, 1, self.spec, {}, self.now)
        self.pool.append(RunSubmitted(self.run_id, self.spec.name, 1, {}, self.now))

    def deliver(self, index: int, keep_copy: bool = False) -> None:
        """Apply pool[index]; a deferred event goes back to the pool, as JetStream redelivers it."""
        event = self.pool[index] if keep_copy else self.pool.pop(index)
        self.now += 1000.0  # every retry delay in these tests is shorter than one tick
        decision = decide(self.state, event, self.now)
        active = sum(1 for t in self.state.tasks.values() if t.status in TASK_ACTIVE)
        assert self.state.active == active, f"active counter {self.state.active}, really {active}"
        limit = self.spec.max_concurrency
        assert limit is None or active <= limit, f"{active} tasks active, max_concurrency {limit}"
        if decision.defer_until is not None:
            if not keep_copy:
                self.pool.append(event)
            return
        for cmd in decision.commands:
            match cmd:
                case DispatchTask():
                    self._check_may_start(cmd.task)
                    self.dispatches.append((cmd.task, cmd.attempt))
                    ok = self.oracle(cmd.task, cmd.attempt)
                    self.pool.append(TaskStarted(self.run_id, cmd.task, cmd.attempt, self.now, "w"))
                    result: Event = (
                        TaskSucceeded(self.run_id, cmd.task, cmd.attempt, self.now, "w", {"n": cmd.attempt})
                        if ok
                        else TaskFailed(self.run_id, cmd.task, cmd.attempt, self.now, f"boom {cmd.attempt}", "w")
                    )
                    self.pool.append(result)
                case ScheduleDue():
                    self.pool.append(TaskDue(self.run_id, cmd.task, cmd.attempt, self.now, cmd.due))

    def _check_may_start(self, name: str) -> None:
        task = self.spec.by_name[name]
        parents = [self.state.tasks[p].status for p in task.depends_on]
        assert all(s in TASK_DONE for s in parents) or evaluate(task.trigger_rule, parents) is Verdict.RUN, (
            f"{name} dispatched while its parents are {parents}"
        )

    def run_in_order(self, limit: int = 10_000) -> None:
        steps = 0
        while self.pool and steps < limit:
            self.deliver(0)
            steps += 1


def outcome(state: RunState) -> dict[str, Any]:
    """What must not depend on delivery order: statuses, attempts, results and errors."""
    return {
        "status": state.status.value,
        "tasks": {n: (t.status.value, t.attempt, t.result, t.error) for n, t in sorted(state.tasks.items())},
    }
