"""Trigger rules: given how a task's parents ended so far, may it run, wait, or never run?"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from jetdag.engine.model import TriggerRule
from jetdag.engine.state import TASK_DONE, TaskStatus


class Verdict(Enum):
    RUN = "run"
    WAIT = "wait"
    SKIP = "skip"


# An ignored task counts as done and successful for its children; a cancelled one as failed.
_SUCCESS = frozenset({TaskStatus.SUCCEEDED, TaskStatus.IGNORED})
_FAILURE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})


def evaluate(rule: TriggerRule, parents: Iterable[TaskStatus]) -> Verdict:
    """The verdict of `rule` over the parents' current statuses (Airflow semantics, skips as verdicts)."""
    statuses = list(parents)
    done = sum(1 for s in statuses if s in TASK_DONE)
    ok = sum(1 for s in statuses if s in _SUCCESS)
    failed = sum(1 for s in statuses if s in _FAILURE)
    skipped = sum(1 for s in statuses if s is TaskStatus.SKIPPED)
    n, all_done = len(statuses), done == len(statuses)
    match rule:
        case TriggerRule.ALL_SUCCESS:
            return Verdict.RUN if ok == n else Verdict.SKIP if failed or skipped else Verdict.WAIT
        case TriggerRule.ALL_DONE:
            return Verdict.RUN if all_done else Verdict.WAIT
        case TriggerRule.ALL_FAILED:
            return Verdict.RUN if failed == n else Verdict.SKIP if ok or skipped else Verdict.WAIT
        case TriggerRule.ONE_SUCCESS:
            return Verdict.RUN if ok else Verdict.SKIP if all_done else Verdict.WAIT
        case TriggerRule.ONE_FAILED:
            return Verdict.RUN if failed else Verdict.SKIP if all_done else Verdict.WAIT
        case TriggerRule.NONE_FAILED:
            return Verdict.SKIP if failed else Verdict.RUN if all_done else Verdict.WAIT
    raise ValueError(f"unknown trigger rule {rule!r}")
