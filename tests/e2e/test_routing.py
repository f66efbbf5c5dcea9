"""Routing by handler: a task goes only to a worker that has its handler, and one no live worker can run says so.

The fleet is mixed as after `jetdag up` plus `jetdag worker --import mymod`: this process's worker has the
test's handlers, a `jetdag worker` process only the built-in ones.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import jetdag.engine.client as client_module
from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from jetdag.engine.workers import served
from jetdag.web.api.metrics import _consumers
from tests.e2e.up_process import JETDAG, clean_env
from tests.helpers import eventually

REPO = Path(__file__).resolve().parents[2]
QUEUE = "t_route_q"
RUNS = 200


@handler("t_route_add")
def add(ctx: TaskContext) -> int:
    return int(ctx.payload["a"]) + int(ctx.payload["b"])


def one_try(name: str, handler_name: str, queue: str = QUEUE) -> WorkflowSpec:
    return WorkflowSpec(
        name,
        (TaskSpec("t", handler_name, queue=queue, payload={"a": 1, "b": 2}),),
        retry=RetryPolicy(max_attempts=1),
    )


@pytest.fixture
def builtins_only_worker(nats_url: str, tmp_path: Path) -> Any:
    """A `jetdag worker` process on QUEUE that knows noop, sleep, command and http only."""
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [JETDAG, "worker", "--nats", nats_url, "--queue", QUEUE, "--concurrency", "64", "--heartbeat", "0.5"],
            cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    yield proc
    proc.terminate()
    proc.wait(20)


async def _both_beat(client: Client) -> bool:
    workers = [w for w in await client.workers() if w["alive"] and QUEUE in w["queues"]]
    return len(workers) == 2


async def test_a_worker_without_the_handler_never_takes_its_tasks(
    nats_url: str, builtins_only_worker: subprocess.Popen[bytes]
) -> None:
    spec = one_try("t_route_mixed", "t_route_add")
    chores = one_try("t_route_chores", "noop")
    async with System(nats_url, queues=(QUEUE,), concurrency=64) as system, await Client.connect(nats_url) as client:
        assert system.worker is not None
        await eventually(lambda: _both_beat(client), timeout=20)
        await client.apply(spec)
        await client.apply(chores)
        runs = [await client.submit(spec.name) for _ in range(RUNS)]
        noops = [await client.submit(chores.name) for _ in range(RUNS)]
        views = [await client.wait(r, timeout=60) for r in runs]
        # Every one on its first and only attempt, and on the worker that has the handler.
        assert Counter((v["status"], v["tasks"]["t"]["attempts"]) for v in views) == {("succeeded", 1): RUNS}
        assert {v["tasks"]["t"]["worker"] for v in views} == {system.worker.id}
        assert {v["tasks"]["t"]["result"] for v in views} == {3}
        # Both workers still share what both can run.
        assert [(await client.wait(r, timeout=60))["status"] for r in noops] == ["succeeded"] * RUNS
    assert builtins_only_worker.poll() is None


async def test_a_task_no_live_worker_can_run_waits_and_says_why(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "UNSERVED_AFTER", 0.5)  # a grace period of 10 s, shortened
    spec = one_try("t_route_nobody_wf", "t_route_late", queue="default")
    await client.apply(spec)
    run_id = await client.submit(spec.name)
    why = "no live worker has handler 't_route_late' for queue 'default'"

    async def says_why() -> bool:
        try:
            return (await client.status(run_id))["tasks"]["t"].get("waiting") == why
        except NotFound:  # the engine has not taken the submission yet
            return False

    await eventually(says_why, timeout=10)
    view = await client.status(run_id)
    assert (view["status"], view["tasks"]["t"]["status"], view["tasks"]["t"]["attempts"]) == ("running", "queued", 1)
    families = {f.name: f for f in await _consumers(client, served(await client.workers()))}
    assert ("", {"queue": "default", "handler": "t_route_late"}, 1) in families["jetdag_tasks_unserved"].samples

    # A worker that has the handler (here: this process's, once the handler is registered) runs it.
    handler("t_route_late")(add)
    done = await client.wait(run_id, timeout=20)
    assert (done["status"], done["tasks"]["t"]["attempts"], done["tasks"]["t"]["result"]) == ("succeeded", 1, 3)
