"""Run control through System and a real nats-server: cancel interrupts handlers, pause/resume, ignore, rerun."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from jetdag.actors.system import System
from jetdag.actors.worker import CANCELLED
from jetdag.engine.client import Client
from jetdag.engine.errors import ControlError, NotFound
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from tests.helpers import eventually, run_inputs

ONCE = RetryPolicy(max_attempts=1)

_gates: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}
_interrupted: set[str] = set()
_calls: dict[str, int] = {}
_broken: set[str] = set()


def _gate(key: str) -> tuple[asyncio.Event, asyncio.Event]:
    """(started, release) for the gate handler of the run with param gate=key."""
    return _gates.setdefault(key, (asyncio.Event(), asyncio.Event()))


@handler("t_ctl_gate")
async def gate(ctx: TaskContext) -> str:
    started, release = _gate(ctx.params["gate"])
    started.set()
    try:
        await release.wait()
    except asyncio.CancelledError:
        _interrupted.add(ctx.params["gate"])
        raise
    return "released"


@handler("t_ctl_value")
async def value(ctx: TaskContext) -> dict[str, int]:
    _calls[ctx.params["key"]] = _calls.get(ctx.params["key"], 0) + 1
    return {"value": 7}


@handler("t_ctl_maybe_broken")
async def maybe_broken(ctx: TaskContext) -> Any:
    if ctx.params["key"] in _broken:
        raise RuntimeError("broken input")
    return {"got": ctx.payload}


async def _status(client: Client, run_id: str, want: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any]:
        try:
            view = await client.status(run_id)
        except NotFound as exc:  # not saved yet
            raise AssertionError(str(exc)) from None
        assert view["status"] == want, view
        return view

    return await eventually(reached, timeout=15)


async def _submit(client: Client, spec: WorkflowSpec, params: dict[str, Any]) -> str:
    await client.apply(spec)
    return await client.submit(spec.name, params)


async def test_cancel_interrupts_a_blocked_handler_and_the_run_is_cancelled(client: Client, system: System) -> None:
    spec = WorkflowSpec(
        "t_ctl_cancel", (TaskSpec("block", "t_ctl_gate"), TaskSpec("after", "noop", depends_on=("block",))), retry=ONCE
    )
    started, _ = _gate("cancel")
    run_id = await _submit(client, spec, {"gate": "cancel"})
    await asyncio.wait_for(started.wait(), 15)
    await _status(client, run_id, "running")  # a task can start before the run's first snapshot is saved

    await client.cancel(run_id, "changed my mind", by="tester")
    view = await _status(client, run_id, "cancelled")
    assert view["error"] == "cancelled by tester: changed my mind"
    assert {n: t["status"] for n, t in view["tasks"].items()} == {"block": "cancelled", "after": "cancelled"}

    await eventually(lambda: "cancel" in _interrupted and system.worker is not None and not system.worker.attempts)
    assert system.worker is not None and system.worker.interrupts == 1

    async def reported() -> bool:
        failures = [msgpack.unpackb(m.data, raw=False) for m in await run_inputs(client.js, run_id)]
        return any(f.get("k") == "task.failed" and f.get("error") == CANCELLED for f in failures)

    await eventually(reported)  # the worker's non-retryable failure, which the cancelled run ignores
    assert (await client.status(run_id))["tasks"]["block"]["status"] == "cancelled"
    await client.cancel(run_id)  # again: already so, not an error
    with pytest.raises(ControlError, match="already was cancelled"):
        await client.pause(run_id)


async def test_cancel_stops_a_running_command_process(client: Client, system: System) -> None:
    spec = WorkflowSpec("t_ctl_cancel_cmd", (TaskSpec("sleepy", "command", payload={"argv": ["sleep", "60"]}),))
    run_id = await _submit(client, spec, {})
    await eventually(
        lambda: system.worker is not None and any(a.run == run_id for a in system.worker.attempts.values())
    )
    await _status(client, run_id, "running")
    await client.cancel(run_id)
    await _status(client, run_id, "cancelled")
    # The process group is killed: the attempt leaves the worker long before `sleep 60` would end.
    await eventually(lambda: system.worker is not None and not system.worker.attempts, timeout=15)


async def test_pause_holds_the_child_until_resume(client: Client) -> None:
    spec = WorkflowSpec(
        "t_ctl_pause", (TaskSpec("first", "t_ctl_gate"), TaskSpec("second", "noop", depends_on=("first",)))
    )
    started, release = _gate("pause")
    run_id = await _submit(client, spec, {"gate": "pause"})
    await asyncio.wait_for(started.wait(), 15)
    await _status(client, run_id, "running")  # a task can start before the run's first snapshot is saved

    await client.pause(run_id)
    await _status(client, run_id, "paused")
    release.set()  # the running task finishes while paused and its result is applied

    async def first_done() -> dict[str, Any]:
        view = await client.status(run_id)
        assert view["tasks"]["first"]["status"] == "succeeded", view
        return view

    view = await eventually(first_done, timeout=15)
    # The step that applied the result is the one that would have dispatched `second`.
    assert view["status"] == "paused" and view["tasks"]["second"]["status"] == "waiting"

    await client.resume(run_id)
    final = await client.wait(run_id, timeout=15)
    assert final["status"] == "succeeded" and final["tasks"]["second"]["attempts"] == 1


def _chain(name: str) -> WorkflowSpec:
    return WorkflowSpec(
        name,
        (
            TaskSpec("a", "t_ctl_value"),
            TaskSpec("b", "t_ctl_maybe_broken", depends_on=("a",), payload="{result:a.value}"),
            TaskSpec("c", "noop", depends_on=("b",)),
        ),
        retry=ONCE,
    )


async def test_rerun_from_the_failed_task_runs_only_its_subgraph_and_succeeds(client: Client) -> None:
    _broken.add("rerun")
    run_id = await _submit(client, _chain("t_ctl_rerun"), {"key": "rerun"})
    failed = await client.wait(run_id, timeout=15)
    assert failed["status"] == "failed" and failed["tasks"]["b"]["status"] == "failed"

    with pytest.raises(ControlError, match=rf"run {run_id} has no task 'nosuch'"):
        await client.rerun(run_id, "nosuch")
    _broken.discard("rerun")
    new = await client.rerun(run_id, "b")
    view = await client.wait(new, timeout=15)
    assert view["status"] == "succeeded" and view["rerun_of"] == run_id
    assert view["params"] == {"key": "rerun"}
    assert {n: (t["status"], t["attempts"]) for n, t in view["tasks"].items()} == {
        "a": ("succeeded", 0),
        "b": ("succeeded", 1),
        "c": ("succeeded", 1),
    }
    assert view["tasks"]["a"]["result"] == {"value": 7}
    assert view["tasks"]["b"]["result"] == {"got": 7}, "{result:a.value} rendered from the original's result"
    assert _calls["rerun"] == 1, "a ran in the original run only"
    assert (await client.status(run_id))["status"] == "failed", "the original stays as it was"


async def test_ignoring_the_failed_task_lets_the_failed_run_go_on_and_succeed(client: Client) -> None:
    _broken.add("ignore")
    run_id = await _submit(client, _chain("t_ctl_ignore"), {"key": "ignore"})
    assert (await client.wait(run_id, timeout=15))["status"] == "failed"
    with pytest.raises(ControlError, match="task 'a' is succeeded: only a failed or retrying task can be ignored"):
        await client.ignore(run_id, "a")

    await client.ignore(run_id, "b", reason="known bad input")
    view = await _status(client, run_id, "succeeded")
    assert {n: t["status"] for n, t in view["tasks"].items()} == {"a": "succeeded", "b": "ignored", "c": "succeeded"}


async def test_control_of_an_unknown_run_is_not_found_and_a_live_run_cannot_be_rerun(client: Client) -> None:
    for call in (
        client.cancel("NOSUCHRUN"),
        client.pause("NOSUCHRUN"),
        client.resume("NOSUCHRUN"),
        client.ignore("NOSUCHRUN", "a"),
        client.rerun("NOSUCHRUN"),
    ):
        with pytest.raises(NotFound, match="NOSUCHRUN"):
            await call
    started, release = _gate("live")
    run_id = await _submit(client, WorkflowSpec("t_ctl_live", (TaskSpec("g", "t_ctl_gate"),)), {"gate": "live"})
    await asyncio.wait_for(started.wait(), 15)
    await _status(client, run_id, "running")  # a task can start before the run's first snapshot is saved
    with pytest.raises(ControlError, match="still running"):
        await client.rerun(run_id)
    release.set()
    assert (await client.wait(run_id, timeout=15))["status"] == "succeeded"


async def test_a_failed_run_rehydrated_by_another_engine_can_still_be_revived_by_ignore(nats_url: str) -> None:
    _broken.add("rehydrate")
    spec = _chain("t_ctl_rehydrate")
    async with System(nats_url, drain_timeout=2.0), await Client.connect(nats_url) as client:
        run_id = await _submit(client, spec, {"key": "rehydrate"})
        assert (await client.wait(run_id, timeout=15))["status"] == "failed"
    # A fresh engine knows the run only from its snapshot in jd_runs.
    async with System(nats_url, drain_timeout=2.0), await Client.connect(nats_url) as client:
        await client.ignore(run_id, "b")
        view = await _status(client, run_id, "succeeded")
        assert view["tasks"]["c"]["attempts"] == 1
