"""Routing by handler: a task goes only to a worker that has its handler, and one no live worker can run says so.

The fleet is mixed as after `jetdag up` plus `jetdag worker --import mymod`: this process's worker has the
test's handlers, a `jetdag worker` process only the built-in ones.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import jetdag.actors.worker as worker_module
import jetdag.engine.client as client_module
from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from jetdag.engine.workers import served
from jetdag.web.api.metrics import _consumers
from tests.e2e.up_process import JETDAG, clean_env, start_up, stop_up, write
from tests.helpers import eventually, eventually_sync

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


MYMOD = """
from jetdag.engine.handlers import handler


@handler("t_up_imported")
def imported(ctx):
    return ctx.payload["a"] * 2
"""

FLOW = """
from jetdag.engine.handlers import handler
from jetdag.engine.workflow import Task, Workflow

from neighbour import FACTOR  # beside this file: importable as `python flow.py` would have it


@handler("t_up_from_flow")
def scaled(ctx):
    return ctx.payload["a"] * FACTOR


wf = Workflow(name="t_up_flow")
wf.add(Task("scale", handler=scaled, payload={"a": 2}, max_retries=0))
"""

IMPORTED = """
name: t_up_imported_wf
tasks:
  - {name: double, handler: t_up_imported, payload: {a: 21}, max_retries: 0}
"""


def test_up_serves_the_handlers_of_import_and_of_its_python_workflows(tmp_path: Path) -> None:
    write(tmp_path / "mymod.py", MYMOD)
    (tmp_path / "flows").mkdir()
    write(tmp_path / "flows" / "neighbour.py", "FACTOR = 7\n")
    write(tmp_path / "flows" / "flow.py", FLOW)
    write(tmp_path / "imported.yaml", IMPORTED)
    up = start_up(tmp_path, False, "--import", "mymod", "--workflows", "flows")
    try:
        assert up.cli("apply", "imported.yaml").returncode == 0
        for workflow, result in (("t_up_imported_wf", 42), ("t_up_flow", 14)):
            done = up.cli("submit", workflow, "--wait")
            assert done.returncode == 0, done.stderr + up.log()
            [task] = up.json("status", done.stdout.split()[0])["tasks"].values()
            assert (task["attempts"], task["result"]) == (1, result)
        # The file changes: `up` applies it again, and its handler's new code runs the new attempts.
        write(tmp_path / "flows" / "flow.py", FLOW.replace("* FACTOR", "* FACTOR * 3"))

        def new_code() -> bool:
            done = up.cli("submit", "t_up_flow", "--wait")
            assert done.returncode == 0, done.stderr + up.log()
            return up.json("status", done.stdout.split()[0])["tasks"]["scale"]["result"] == 42

        eventually_sync(new_code, timeout=20)
    finally:
        stop_up(up, signal.SIGTERM)


async def test_a_task_whose_run_was_cancelled_while_it_waited_never_runs(
    client: Client, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "STALE_AFTER", 0.0)  # every task is checked, not only those 10 s old
    ran: list[str] = []
    handler("t_route_never")(lambda ctx: ran.append(ctx.run_id))
    spec = one_try("t_route_cancelled_wf", "t_route_never", queue="t_route_late_q")  # no worker serves it yet
    await client.apply(spec)
    run_id = await client.submit(spec.name)

    async def queued() -> bool:
        try:
            return (await client.status(run_id))["tasks"]["t"]["status"] == "queued"
        except NotFound:
            return False

    await eventually(queued, timeout=10)
    await client.cancel(run_id, "not needed")
    assert (await client.wait(run_id, timeout=10))["status"] == "cancelled"

    async def taken() -> bool:
        return (await client.js.stream_info(S.TASKS)).state.messages == 0

    # A worker that starts now never heard the cancel's interrupt: it takes the task and acks it unrun.
    async with System(nats_url, engine=False, queues=("t_route_late_q",)):
        await eventually(taken, timeout=20)
    assert ran == []


async def test_a_task_that_requires_a_label_goes_only_to_a_worker_with_it(
    client: Client, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "UNSERVED_AFTER", 0.5)
    ran_on: list[str] = []
    handler("t_route_gpu")(lambda ctx: ran_on.append(ctx.run_id) or "done")
    spec = WorkflowSpec(
        "t_route_gpu_wf", (TaskSpec("t", "t_route_gpu", requires={"gpu": "true"}),), retry=RetryPolicy(max_attempts=1)
    )
    await client.apply(spec)
    run_id = await client.submit(spec.name)  # the `client` fixture's worker (no labels) has the handler...
    why = "no live worker with gpu=true has handler 't_route_gpu' for queue 'default'"

    async def says_why() -> bool:
        try:
            return (await client.status(run_id))["tasks"]["t"].get("waiting") == why
        except NotFound:
            return False

    await eventually(says_why, timeout=10)  # ...but not the label
    async with System(nats_url, engine=False, labels={"gpu": "true", "zone": "eu"}) as gpu:
        assert gpu.worker is not None
        done = await client.wait(run_id, timeout=20)
        assert (done["status"], done["tasks"]["t"]["worker"]) == ("succeeded", gpu.worker.id)
    assert ran_on == [run_id]
