"""Worker recovery with real worker processes: `kill -9` and `SIGSTOP` mid-task, and `jetdag workers`.

The engine runs in this process (its reaper presumes a worker dead after 3 missed beats); workers are
`jetdag worker` processes beating every BEAT seconds instead of 5, so a reclaim takes about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from jetdag.actors.system import System
from jetdag.actors.worker import ACK_WAIT
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.messages import MSG_ID
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from tests.e2e.up_process import JETDAG, clean_env, jetdag
from tests.helpers import eventually, run_inputs

REPO = Path(__file__).resolve().parents[2]
HANDLERS = "tests.e2e.worker_chaos_handlers"
QUEUE = "t_chaos_q"
BEAT = 0.25
"""Seconds between the workers' heartbeats: presumed dead after 0.75 s of silence."""


def hold_spec(tmp: Path) -> WorkflowSpec:
    """One task whose first attempt holds until `tmp/release` exists; retried 0.1 s after a failure."""
    return WorkflowSpec(
        "t_chaos_hold",
        (TaskSpec("hold", "t_chaos_hold", queue=QUEUE, payload={"dir": str(tmp)}),),
        retry=RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=0.0),
    )


class Workers:
    """`jetdag worker` processes of one test; `close()` stops every one still running (none is left behind)."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url, self.logs = url, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, heartbeat: float = BEAT, worker_id: str | None = None) -> subprocess.Popen[bytes]:
        args = ["--log-level", "info", "worker", "--nats", self.url, "--queue", QUEUE, "--import", HANDLERS]
        args += ["--worker-id", worker_id] if worker_id else []
        with (self.logs / f"worker-{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [JETDAG, *args, "--heartbeat", str(heartbeat), "--concurrency", "4"],
                cwd=REPO, env=clean_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"worker-{name}.log").read_text(errors="replace")

    async def stop(self, name: str) -> int:
        """SIGTERM (after a SIGCONT, in case it is stopped); SIGKILL if it has not exited within 20 s."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            raise

    async def close(self) -> None:
        for name in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # killed: the test fails on its own assertions
                await self.stop(name)


async def view_of(client: Client, pid: int) -> dict[str, Any] | None:
    return next((w for w in await client.workers() if w["pid"] == pid), None)


async def running_on(client: Client, pid: int, run_id: str) -> dict[str, Any] | None:
    """The worker's view once its heartbeat lists an attempt of `run_id` as running."""
    view = await view_of(client, pid)
    return view if view and any(t["run"] == run_id for t in view["tasks"]) else None


async def result_of(js: JetStreamContext, run_id: str, attempt: int) -> RawStreamMsg | None:
    """The worker's result message for `attempt` as JD_EVENTS holds it."""
    wanted = f"{run_id}:hold:{attempt}:result"
    return next((m for m in await run_inputs(js, run_id) if m.headers and m.headers.get(MSG_ID) == wanted), None)


@pytest.fixture
async def workers(nats_url: str, tmp_path: Path) -> Any:
    procs = Workers(nats_url, tmp_path)
    try:
        yield procs
    finally:
        await procs.close()


@pytest.fixture
async def client(nats_url: str, tmp_path: Path) -> Any:
    """An engine (no worker) in this process, and a client, with the hold workflow applied."""
    async with System(nats_url, queues=[]), await Client.connect(nats_url) as c:
        await c.apply(hold_spec(tmp_path))
        yield c


@pytest.mark.chaos
async def test_a_worker_killed_mid_task_has_its_task_retried_elsewhere_long_before_ack_wait(
    client: Client, workers: Workers
) -> None:
    a = workers.start("a")
    run_id = await client.submit("t_chaos_hold")
    await eventually(lambda: running_on(client, a.pid, run_id), timeout=20)
    b = workers.start("b")
    await eventually(lambda: view_of(client, b.pid), timeout=20)

    a.send_signal(signal.SIGKILL)
    await asyncio.to_thread(a.wait, 10)
    killed = time.monotonic()
    view = await client.wait(run_id, timeout=20)
    took = time.monotonic() - killed

    task = view["tasks"]["hold"]
    assert (view["status"], task["attempts"], task["result"]) == ("succeeded", 2, {"attempt": 2, "pid": b.pid})
    assert took < ACK_WAIT / 3, f"reclaimed after {took:.1f}s: AckWait ({ACK_WAIT:g}s) would have done as well"
    reaped = [m for m in await run_inputs(client.js, run_id) if m.headers and m.headers[MSG_ID].endswith(":reaped")]
    assert [m.headers[MSG_ID] for m in reaped if m.headers] == [f"{run_id}:hold:1:reaped"]
    failure = msgpack.unpackb(reaped[0].data, raw=False)
    assert (failure["k"], failure["attempt"], failure["retryable"]) == ("task.failed", 1, True)
    assert f"on {socket.gethostname()} presumed dead (no heartbeat for " in failure["error"]
    assert await result_of(client.js, run_id, 1) is None  # the killed worker never answered
    await eventually(lambda: _none(view_of(client, a.pid)))  # reaped once: its entry is gone
    assert await workers.stop("b") == 0, workers.log("b")


@pytest.mark.chaos
async def test_a_frozen_worker_loses_its_task_and_its_late_result_is_recorded_but_not_applied(
    client: Client, workers: Workers, tmp_path: Path
) -> None:
    a = workers.start("a")
    run_id = await client.submit("t_chaos_hold")
    await eventually(lambda: running_on(client, a.pid, run_id), timeout=20)
    b = workers.start("b")
    await eventually(lambda: view_of(client, b.pid), timeout=20)

    a.send_signal(signal.SIGSTOP)
    view = await client.wait(run_id, timeout=20)
    task = view["tasks"]["hold"]
    assert (view["status"], task["attempts"], task["result"]) == ("succeeded", 2, {"attempt": 2, "pid": b.pid})
    _, revision = await client.runs.load(run_id)

    (tmp_path / "release").touch()  # attempt 1 may finish now...
    a.send_signal(signal.SIGCONT)  # ...and so it does, long after it was given up on
    late = await eventually(lambda: result_of(client.js, run_id, 1), timeout=20)
    body = msgpack.unpackb(late.data, raw=False)
    assert (body["k"], body["attempt"], body["result"]) == ("task.succeeded", 1, {"attempt": 1, "pid": a.pid})

    # The engine has read the late result (its partition consumer acked past it) and changed nothing.
    partition = S.partition_of(run_id)

    async def read_past_it() -> bool:
        info = await client.js.consumer_info(S.EVENTS, S.partition_consumer(partition))
        return (info.ack_floor.stream_seq if info.ack_floor else 0) >= (late.seq or 0)

    await eventually(read_past_it)
    assert (await client.runs.load(run_id))[1] == revision
    assert await client.status(run_id) == view

    # The frozen worker beats again: alive, and idle once its late result was published.
    async def alive_and_idle() -> bool:
        w = await view_of(client, a.pid)
        return w is not None and w["alive"] and w["running"] == 0

    await eventually(alive_and_idle)
    assert await workers.stop("a") == 0, workers.log("a")
    assert await workers.stop("b") == 0, workers.log("b")


@pytest.mark.chaos
async def test_jetdag_workers_lists_a_live_worker_with_its_queues_and_running_task(
    client: Client, workers: Workers, nats_url: str, tmp_path: Path
) -> None:
    a = workers.start("a", heartbeat=1.0)
    run_id = await client.submit("t_chaos_hold")
    await eventually(lambda: running_on(client, a.pid, run_id), timeout=20)

    done = await asyncio.to_thread(jetdag, "workers", "--json", "--nats", nats_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (listed,) = [w for w in orjson.loads(done.stdout) if w["pid"] == a.pid]
    assert (listed["host"], listed["queues"], listed["state"], listed["alive"]) == (
        socket.gethostname(), [QUEUE], "alive", True,
    )  # fmt: skip
    assert listed["running"] == 1 and listed["age"] < listed["interval"] * 3
    (running,) = listed["tasks"]
    reply = S.event_subject(S.partition_of(run_id), run_id)
    assert {k: running[k] for k in ("run", "task", "attempt", "reply")} == {
        "run": run_id, "task": "hold", "attempt": 1, "reply": reply,
    }  # fmt: skip
    assert "t_chaos_hold" in listed["handlers"] and listed["interval"] == 1.0

    table = await asyncio.to_thread(jetdag, "workers", "--nats", nats_url, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    (line,) = [row for row in table.stdout.splitlines() if row.startswith(listed["id"])]
    assert QUEUE in line and line.split()[-1] == "alive"

    (tmp_path / "release").touch()
    assert (await client.wait(run_id, timeout=20))["status"] == "succeeded"
    assert await workers.stop("a") == 0, workers.log("a")


async def _none(value: Any) -> bool:
    return await value is None


@pytest.mark.chaos
async def test_a_worker_started_with_the_id_of_a_dead_one_takes_its_tasks_over_at_once(
    client: Client, workers: Workers
) -> None:
    # Beats every 5 s: the reaper would wait 15 s; the new worker of the same id does not.
    a = workers.start("a", heartbeat=5.0, worker_id="t-pod-0")
    run_id = await client.submit("t_chaos_hold")
    await eventually(lambda: running_on(client, a.pid, run_id), timeout=20)
    a.send_signal(signal.SIGKILL)
    await asyncio.to_thread(a.wait, 10)
    killed = time.monotonic()
    b = workers.start("b", heartbeat=5.0, worker_id="t-pod-0")
    view = await client.wait(run_id, timeout=20)
    took = time.monotonic() - killed

    task = view["tasks"]["hold"]
    assert (view["status"], task["attempts"], task["result"]) == ("succeeded", 2, {"attempt": 2, "pid": b.pid})
    assert took < 10, f"taken over after {took:.1f}s: the reaper alone takes 15 s"
    [failure] = [
        msgpack.unpackb(m.data, raw=False)
        for m in await run_inputs(client.js, run_id)
        if m.headers and m.headers[MSG_ID] == f"{run_id}:hold:1:reaped"
    ]
    assert "worker t-pod-0 on" in failure["error"] and "replaced by a new worker of the same id" in failure["error"]
    assert await workers.stop("b") == 0, workers.log("b")


@pytest.mark.chaos
async def test_a_task_killed_mid_way_resumes_from_its_checkpoint(client: Client, workers: Workers) -> None:
    spec = WorkflowSpec(
        "t_chaos_resume_wf", (TaskSpec("t", "t_chaos_resume", queue=QUEUE),),
        retry=RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=0.0),
    )  # fmt: skip
    await client.apply(spec)
    a = workers.start("a")
    run_id = await client.submit(spec.name)
    reply = S.event_subject(S.partition_of(run_id), run_id)

    async def checkpointed() -> bool:
        try:
            await client.js.get_msg(S.EVENTS, subject=S.checkpoint_subject(reply, "t"))
        except NotFoundError:
            return False
        return True

    await eventually(checkpointed, timeout=20)
    b = workers.start("b")
    await eventually(lambda: view_of(client, b.pid), timeout=20)
    a.send_signal(signal.SIGKILL)
    await asyncio.to_thread(a.wait, 10)
    view = await client.wait(run_id, timeout=20)
    assert view["status"] == "succeeded"
    assert view["tasks"]["t"]["result"] == {"attempt": 2, "resumed_from": {"rows": 300}}
    assert await workers.stop("b") == 0, workers.log("b")
