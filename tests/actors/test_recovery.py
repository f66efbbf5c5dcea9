"""Runs survive their engine: a new engine finishes them; idle run actors leave memory and come back."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import msgpack
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetdag.actors.partition import PartitionOwner
from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.handlers import Retry, TaskContext, handler
from jetdag.engine.ids import new_run_id
from jetdag.engine.model import TaskSpec, WorkflowSpec
from tests.helpers import eventually

GATED = WorkflowSpec(
    "t_recovery_gated",
    (
        TaskSpec("a", "noop"),
        TaskSpec("b", "t_recovery_gate", depends_on=("a",)),
        TaskSpec("c", "noop", depends_on=("b",)),
    ),
)

_gates: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}


@handler("t_recovery_gate")
async def gate(ctx: TaskContext) -> str:
    started, release = _gates[ctx.run_id]
    started.set()
    await release.wait()
    return "through"


@handler("t_recovery_retry_later")
def retry_later(ctx: TaskContext) -> int:
    if ctx.attempt == 1:
        raise Retry("come back later", delay=1.0)
    return ctx.attempt


def new_gate(run_id: str) -> tuple[asyncio.Event, asyncio.Event]:
    _gates[run_id] = (asyncio.Event(), asyncio.Event())
    return _gates[run_id]


def owner_of(system: System, run_id: str) -> PartitionOwner:
    """The PartitionOwner running `run_id`'s partition in `system`, found through the engine's supervisor."""
    assert system.engine is not None
    task = system.engine.supervisor.children[S.lease_key(S.partition_of(run_id))]
    body = inspect.getcoroutinelocals(task.get_coro())["body"]  # the owner's bound `run`
    owner = body.__self__
    assert isinstance(owner, PartitionOwner)
    return owner


async def step_records(js: JetStreamContext, run_id: str) -> list[dict[str, Any]]:
    """The run's step records from JD_EVENTS, oldest first."""
    subject = S.step_subject(S.partition_of(run_id), run_id)
    out: list[dict[str, Any]] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(S.EVENTS, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append(msgpack.unpackb(msg.data, raw=False))
        seq = (msg.seq or seq) + 1


@pytest.mark.parametrize("second_engine", ["engine-1", "engine-2"])
async def test_a_run_interrupted_by_an_engine_stop_is_finished_by_the_next_engine(
    nats_url: str, second_engine: str
) -> None:
    async with System(nats_url, engine=False, concurrency=4), await Client.connect(nats_url) as client:
        first = System(nats_url, queues=[], engine_id="engine-1")
        await first.start()
        try:
            await client.apply(GATED)
            run_id = new_run_id()
            started, release = new_gate(run_id)
            await client.submit(GATED.name, run_id=run_id)
            await asyncio.wait_for(started.wait(), 10)
        finally:
            await first.stop()
        release.set()  # b's result now waits in JD_EVENTS with no engine to read it
        mid = await client.status(run_id)
        assert mid["status"] == "running"
        assert mid["tasks"]["c"]["status"] == "waiting"

        async with System(nats_url, queues=[], engine_id=second_engine) as second:
            assert second.engine is not None
            assert len(second.engine.held) == S.DEFAULT_PARTITIONS  # the first engine released its leases
            view = await client.wait(run_id, timeout=10)
    assert view["status"] == "succeeded"
    assert {n: (t["status"], t["attempts"]) for n, t in view["tasks"].items()} == {
        "a": ("succeeded", 1),
        "b": ("succeeded", 1),
        "c": ("succeeded", 1),
    }
    assert view["tasks"]["b"]["result"] == "through"


async def test_each_step_writes_a_newer_revision_and_a_step_record(client: Client) -> None:
    await client.apply(GATED)
    run_id = new_run_id()
    started, release = new_gate(run_id)
    await client.submit(GATED.name, run_id=run_id)
    await asyncio.wait_for(started.wait(), 10)

    async def b_running() -> tuple[dict[str, Any], int]:
        snapshot, revision = await client.runs.load(run_id)
        assert snapshot is not None and snapshot["tasks"]["b"]["status"] == "running"
        return snapshot, revision

    mid, mid_revision = await eventually(b_running)
    release.set()
    await client.wait(run_id, timeout=10)
    final, final_revision = await client.runs.load(run_id)
    assert final is not None
    assert final_revision > mid_revision
    assert final["seq"] > mid["seq"]

    steps = await step_records(client.js, run_id)
    seqs = [s["seq"] for s in steps]
    assert seqs == sorted(set(seqs)), seqs  # one record per step, in order, none repeated
    assert seqs[-1] == final["seq"]
    assert steps[-1]["status"] == "succeeded"
    statuses = [(t.get("task"), t["status"]) for s in steps for t in s["transitions"]]
    for task in "abc":
        assert [st for name, st in statuses if name == task] == ["queued", "running", "succeeded"]


async def test_an_idle_run_actor_is_passivated_and_a_later_event_rehydrates_it(nats_url: str) -> None:
    async with System(nats_url, idle_timeout=0.2) as system, await Client.connect(nats_url) as client:
        spec = WorkflowSpec("t_recovery_timer", (TaskSpec("later", "t_recovery_retry_later"),))
        await client.apply(spec)
        run_id = await client.submit(spec.name)
        owner = owner_of(system, run_id)

        async def passivated_while_retrying() -> bool:
            snapshot, _ = await client.runs.load(run_id)
            retrying = snapshot is not None and snapshot["tasks"]["later"]["status"] == "retrying"
            return retrying and run_id not in owner.actors

        await eventually(passivated_while_retrying, timeout=5)
        # The retry timer (a task.due event, 1 s out) comes back to an actor rebuilt from the snapshot.
        view = await client.wait(run_id, timeout=10)
        assert view["status"] == "succeeded"
        assert (view["tasks"]["later"]["attempts"], view["tasks"]["later"]["result"]) == (2, 2)
        await eventually(lambda: run_id not in owner.actors, timeout=5)
