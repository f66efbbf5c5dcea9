"""Trigger rules: the whole truth table over two parents (S succeeded, F failed, K skipped, P pending)."""

from __future__ import annotations

import itertools

import pytest

from jetdag.engine.model import TriggerRule
from jetdag.engine.rules import Verdict, evaluate
from jetdag.engine.state import TaskStatus

STATUS = {"S": TaskStatus.SUCCEEDED, "F": TaskStatus.FAILED, "K": TaskStatus.SKIPPED, "P": TaskStatus.RUNNING}
R, W, X = Verdict.RUN, Verdict.WAIT, Verdict.SKIP
PAIRS = ["SS", "SF", "SK", "SP", "FF", "FK", "FP", "KK", "KP", "PP"]
TABLE = {
    TriggerRule.ALL_SUCCESS: [R, X, X, W, X, X, X, X, X, W],
    TriggerRule.ALL_DONE: [R, R, R, W, R, R, W, R, W, W],
    TriggerRule.ALL_FAILED: [X, X, X, X, R, X, W, X, X, W],
    TriggerRule.ONE_SUCCESS: [R, R, R, R, X, X, W, X, W, W],
    TriggerRule.ONE_FAILED: [X, R, X, W, R, R, R, X, W, W],
    TriggerRule.NONE_FAILED: [R, X, R, W, X, X, X, R, W, W],
}
CASES = [(rule, pair, verdict) for rule, row in TABLE.items() for pair, verdict in zip(PAIRS, row, strict=True)]


@pytest.mark.parametrize(("rule", "pair", "verdict"), CASES, ids=[f"{r.value}-{p}" for r, p, _ in CASES])
def test_truth_table(rule: TriggerRule, pair: str, verdict: Verdict) -> None:
    for order in set(itertools.permutations(pair)):  # the order of parents never matters
        assert evaluate(rule, [STATUS[c] for c in order]) is verdict


def test_every_rule_is_in_the_table() -> None:
    assert set(TABLE) == set(TriggerRule)


def test_an_ignored_parent_counts_as_success_and_a_cancelled_one_as_failure() -> None:
    assert evaluate(TriggerRule.ALL_SUCCESS, [TaskStatus.IGNORED, TaskStatus.SUCCEEDED]) is R
    assert evaluate(TriggerRule.ONE_FAILED, [TaskStatus.CANCELLED, TaskStatus.SUCCEEDED]) is R
