"""`jetdag cancel|pause|resume|ignore|rerun` as subprocesses against a real `jetdag up`."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.up_process import Up, start_up, stop_up, write
from tests.helpers import eventually_sync

RUN_ID = re.compile(r"[0-9A-Z]{26}")

CHAIN = """\
name: chain
tasks:
  - name: a
    handler: command
    payload: {argv: [echo, first]}
  - name: b
    handler: command
    depends_on: a
    max_retries: 0
    payload: {argv: ["false"]}
  - name: c
    handler: command
    depends_on: b
    payload: {argv: [echo, last]}
"""

SLOW = """\
name: slow
tasks:
  - name: nap
    handler: command
    payload: {argv: [sleep, "60"]}
  - name: after
    handler: noop
    depends_on: nap
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = start_up(tmp_path_factory.mktemp("up"))
    try:
        write(running.root / "chain.yaml", CHAIN)
        write(running.root / "slow.yaml", SLOW)
        done = running.cli("apply", "chain.yaml", "slow.yaml")
        assert done.returncode == 0, done.stderr
        yield running
    finally:
        stop_up(running, signal.SIGTERM)


def _until(up: Up, run_id: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any]:
        view: dict[str, Any] = up.json("status", run_id)
        assert view["status"] == status, view
        return view

    return eventually_sync(reached, timeout=20, interval=0.2)


def test_rerun_from_a_task_and_ignore_a_failed_one(up: Up) -> None:
    failed = up.cli("submit", "chain", "--wait")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    run_id = failed.stdout.splitlines()[0]

    rerun = up.cli("rerun", run_id, "--from", "b", "--wait")
    assert rerun.returncode == 1, "b fails again: " + rerun.stdout + rerun.stderr
    new = rerun.stdout.splitlines()[0]
    assert RUN_ID.fullmatch(new) and new != run_id
    view = up.json("status", new)
    assert view["rerun_of"] == run_id
    assert {n: (t["status"], t["attempts"]) for n, t in view["tasks"].items()} == {
        "a": ("succeeded", 0),
        "b": ("failed", 1),
        "c": ("skipped", 0),
    }
    unknown_task = up.cli("rerun", run_id, "--from", "nosuch")
    assert unknown_task.returncode == 2 and f"run {run_id} has no task 'nosuch'" in unknown_task.stderr

    not_failed = up.cli("ignore", run_id, "a")
    assert not_failed.returncode == 2 and "only a failed or retrying task" in not_failed.stderr
    ignored = up.cli("ignore", run_id, "b", "--json")
    assert ignored.returncode == 0, ignored.stderr
    assert ignored.stdout.strip().startswith("{") and f'"run_id": "{run_id}"' in ignored.stdout
    final = _until(up, run_id, "succeeded")
    assert final["tasks"]["b"]["status"] == "ignored" and final["tasks"]["c"]["status"] == "succeeded"


def test_pause_resume_and_cancel_a_running_run(up: Up) -> None:
    submitted = up.cli("submit", "slow")
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.splitlines()[0]
    eventually_sync(lambda: up.json("status", run_id)["tasks"]["nap"]["status"] == "running", timeout=20)

    paused = up.cli("pause", run_id)
    assert (paused.returncode, paused.stdout) == (0, f"run {run_id}: pause requested\n")
    _until(up, run_id, "paused")
    assert up.cli("resume", run_id).returncode == 0
    _until(up, run_id, "running")

    cancelled = up.cli("cancel", run_id, "--reason", "not today")
    assert cancelled.returncode == 0, cancelled.stderr
    view = _until(up, run_id, "cancelled")
    assert view["error"].startswith("cancelled") and view["error"].endswith(": not today")
    assert {t["status"] for t in view["tasks"].values()} == {"cancelled"}

    for verb in ("cancel", "pause", "resume", "rerun"):
        unknown = up.cli(verb, "NOSUCHRUN")
        assert unknown.returncode == 2 and "NOSUCHRUN" in unknown.stderr, (verb, unknown.stderr)
