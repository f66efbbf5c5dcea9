"""The worker: priorities, its concurrency limit, draining on stop, unknown handlers, heartbeats."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

import msgpack
from nats.js.errors import KeyNotFoundError

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from tests.helpers import eventually

_order: list[Any] = []
_load = {"now": 0, "max": 0}
_calls: dict[str, int] = {}
_events: dict[str, asyncio.Event] = {}


@handler("t_worker_record")
def record(ctx: TaskContext) -> Any:
    _order.append(ctx.payload)
    return ctx.payload


@handler("t_worker_busy")
async def busy(ctx: TaskContext) -> int:
    _load["now"] += 1
    _load["max"] = max(_load["max"], _load["now"])
    try:
        await asyncio.sleep(0.1)  # wait-ok: a handler's simulated work
    finally:
        _load["now"] -= 1
    return ctx.payload


@handler("t_worker_long")
async def long_task(ctx: TaskContext) -> str:
    _calls[ctx.run_id] = _calls.get(ctx.run_id, 0) + 1
    _events["long started"].set()
    await asyncio.sleep(0.5)  # wait-ok: a handler's simulated work
    return "finished while stopping"


@handler("t_worker_gate")
async def worker_gate(ctx: TaskContext) -> str:
    _events["gate started"].set()
    await _events["gate release"].wait()
    return "let through"


@handler("t_worker_resumable")
def resumable(ctx: TaskContext) -> dict[str, Any]:
    start = (ctx.last_checkpoint or {}).get("done", 0)
    for i in range(start, 10):
        if ctx.attempt == 1 and i == 5:
            raise RuntimeError("crashed halfway")
        ctx.checkpoint(done=i + 1)
    return {"attempt": ctx.attempt, "resumed_from": start}


_stopped = threading.Event()


@handler("t_worker_polite")
def polite(ctx: TaskContext) -> None:
    """A sync handler: its thread cannot be stopped from outside, so it looks at `ctx.cancelled`."""
    while not ctx.cancelled:
        time.sleep(0.01)  # wait-ok: a handler's simulated work
    _stopped.set()


_capped = {"now": 0, "max": 0}


@handler("t_worker_capped", concurrency=2)
async def capped(ctx: TaskContext) -> None:
    _capped["now"] += 1
    _capped["max"] = max(_capped["max"], _capped["now"])
    try:
        await asyncio.sleep(0.05)  # wait-ok: a handler's simulated work
    finally:
        _capped["now"] -= 1


@handler("t_worker_slow_default", timeout="200ms")
async def slow_by_default(ctx: TaskContext) -> str:
    await asyncio.sleep(ctx.payload)  # wait-ok: a handler's simulated work
    return "in time"


async def tasks_in_stream(client: Client) -> int:
    return (await client.js.stream_info(S.TASKS)).state.messages


async def test_higher_priorities_run_first(nats_url: str) -> None:
    _order.clear()
    async with System(nats_url, queues=[]), await Client.connect(nats_url) as client:
        runs = [await client.enqueue("t_worker_record", prio, priority=prio) for prio in (1, 9, 5)]
        await eventually(lambda: _equals(tasks_in_stream(client), 3))  # dispatched, and no one takes them
        async with System(nats_url, engine=False, concurrency=1):
            views = [await client.wait(run_id, timeout=10) for run_id in runs]
    assert [v["status"] for v in views] == ["succeeded"] * 3
    assert _order == [9, 5, 1]


async def test_no_more_tasks_run_at_once_than_the_concurrency(nats_url: str) -> None:
    _load.update(now=0, max=0)
    async with System(nats_url, concurrency=2), await Client.connect(nats_url) as client:
        runs = [await client.enqueue("t_worker_busy", i) for i in range(6)]
        views = [await client.wait(run_id, timeout=10) for run_id in runs]
    assert [v["status"] for v in views] == ["succeeded"] * 6
    assert _load["max"] == 2


async def test_stopping_drains_the_running_task_and_its_success_is_kept(nats_url: str) -> None:
    _events["long started"] = asyncio.Event()
    system = System(nats_url, drain_timeout=5.0)
    await system.start()
    try:
        async with await Client.connect(nats_url) as client:
            run_id = await client.enqueue("t_worker_long")
            await asyncio.wait_for(_events["long started"].wait(), 10)
    finally:
        await system.stop()
    assert _calls[run_id] == 1

    async with System(nats_url), await Client.connect(nats_url) as client:
        view = await client.wait(run_id, timeout=10)
        assert await tasks_in_stream(client) == 0  # acked, not handed back
    task = view["tasks"]["t_worker_long"]
    assert (view["status"], task["attempts"], task["result"]) == ("succeeded", 1, "finished while stopping")
    assert _calls[run_id] == 1


async def test_a_task_shows_as_running_on_its_worker_while_its_handler_works(system: System, client: Client) -> None:
    started, release = _events["gate started"], _events["gate release"] = asyncio.Event(), asyncio.Event()
    run_id = await client.enqueue("t_worker_gate")
    await asyncio.wait_for(started.wait(), 10)

    async def running() -> dict[str, Any]:
        task: dict[str, Any] = (await client.status(run_id))["tasks"]["t_worker_gate"]
        assert task["status"] == "running", task
        return task

    task = await eventually(running, timeout=5)
    assert system.worker is not None and task["worker"] == system.worker.id
    assert task["started_at"] >= task["queued_at"]
    release.set()
    view = await client.wait(run_id, timeout=10)
    assert (view["status"], view["tasks"]["t_worker_gate"]["result"]) == ("succeeded", "let through")


async def test_the_worker_heartbeats_its_queues_and_handlers(system: System, client: Client) -> None:
    assert system.worker is not None
    worker_id = system.worker.id
    kv = await client.js.key_value(S.WORKERS_KV)

    async def beat() -> dict[str, Any]:
        try:
            entry = await kv.get(worker_id)
        except KeyNotFoundError:
            return {}
        return msgpack.unpackb(entry.value, raw=False) if entry.value else {}

    info = await eventually(beat)
    assert info["id"] == worker_id
    assert info["queues"] == ["default"]
    assert {"noop", "command", "t_worker_record", "t_worker_busy"} <= set(info["handlers"])
    assert info["concurrency"] == 16
    assert (info["host"], info["pid"], info["interval"]) == (socket.gethostname(), os.getpid(), 5.0)
    assert info["running"] == []  # attempts: [{"run", "task", "attempt", "reply", "started"}]
    assert info["beat"] >= info["started"]


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_a_retried_attempt_resumes_from_the_last_checkpoint(client: Client) -> None:
    spec = WorkflowSpec(
        "t_worker_resume", (TaskSpec("t", "t_worker_resumable"),), retry=RetryPolicy(initial_delay=0.05, jitter=0)
    )
    await client.apply(spec)
    view = await client.wait(await client.submit(spec.name), timeout=20)
    assert view["status"] == "succeeded"
    assert view["tasks"]["t"]["result"] == {"attempt": 2, "resumed_from": 5}


async def test_a_sync_handler_sees_its_timeout_and_stops(client: Client) -> None:
    spec = WorkflowSpec(
        "t_worker_polite_wf", (TaskSpec("t", "t_worker_polite", timeout=0.3),), retry=RetryPolicy(max_attempts=1)
    )
    await client.apply(spec)
    view = await client.wait(await client.submit(spec.name), timeout=20)
    assert (view["status"], view["tasks"]["t"]["error"]) == ("failed", "timed out after 0.3s")
    assert await asyncio.to_thread(_stopped.wait, 10)  # its thread ended, not left spinning


async def test_a_handlers_concurrency_caps_its_attempts_on_a_worker(client: Client) -> None:
    spec = WorkflowSpec("t_worker_capped_wf", tuple(TaskSpec(f"t{i}", "t_worker_capped") for i in range(12)))
    await client.apply(spec)
    assert (await client.wait(await client.submit(spec.name), timeout=20))["status"] == "succeeded"
    assert _capped["max"] == 2  # the worker runs 16 at once, this handler 2


async def test_a_handlers_timeout_applies_unless_the_task_sets_its_own(client: Client) -> None:
    by_handler = WorkflowSpec(
        "t_worker_default_timeout", (TaskSpec("t", "t_worker_slow_default", payload=1.0),),
        retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip
    by_task = WorkflowSpec(
        "t_worker_own_timeout", (TaskSpec("t", "t_worker_slow_default", payload=0.3, timeout=5),),
        retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip
    for spec in (by_handler, by_task):
        await client.apply(spec)
    first = await client.wait(await client.submit(by_handler.name), timeout=20)
    assert first["tasks"]["t"]["error"] == "timed out after 0.2s"
    second = await client.wait(await client.submit(by_task.name), timeout=20)
    assert second["tasks"]["t"]["result"] == "in time"
