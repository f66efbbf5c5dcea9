"""The conformance suite's side of the wire: it plays the engine (publishes task messages into JD_TASKS, sends
interrupts) and reads what a worker sends back (results in JD_EVENTS, dead letters in JD_DLQ, its heartbeat in
`jd_workers`). Nothing here knows how a worker is built: a worker is a command line, started as a process.

Implementations: the Python reference worker (`jetdag worker`), the Node worker (`deploy/workers/node`), and
any other given as a shell command in `JETDAG_CONFORMANCE_WORKER` (run with `/bin/sh -c` in a process group
of its own, with JETDAG_NATS, JETDAG_QUEUE, JETDAG_CONCURRENCY and JETDAG_HEARTBEAT set; SIGTERM goes to the
group and the exit status is the shell's, so write `exec` before the worker in a compound command:
`cd my-worker && exec ./worker`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import msgpack
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import KeyNotFoundError, NoKeysError

from jetdag.engine import subjects as S
from jetdag.engine.ids import new_run_id
from jetdag.engine.messages import MSG_ID, TaskMessage, encode_interrupt, encode_task
from tests.e2e.up_process import JETDAG, clean_env
from tests.helpers import eventually, stream_messages

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "deploy" / "workers" / "node"
QUEUE = "node"
HEARTBEAT = 0.5
"""Seconds between the workers' beats here: a worker under test shows what it runs within a second."""
HANDLERS = ("echo", "fail", "sleep")
CANCELLED = "cancelled: the run was cancelled while the task ran"
CUSTOM_ENV = "JETDAG_CONFORMANCE_WORKER"
T = TypeVar("T")
READY_WITHIN = 30.0
"""Seconds a worker may take from its start to its first heartbeat (the Python one imports a lot)."""


async def until(fn: Callable[[], Awaitable[T | None]], timeout: float = 10.0, interval: float = 0.02) -> T:
    """`tests.helpers.eventually` for an async condition, typed (mypy cannot solve its union for a coroutine
    function): poll `fn` until it returns something truthy; its value."""
    value: T = await eventually(cast(Callable[[], Any], fn), timeout=timeout, interval=interval)
    return value


@dataclass(frozen=True)
class Implementation:
    """A worker under test: how to start it serving QUEUE against a NATS URL."""

    name: str

    def command(self, url: str, concurrency: int) -> tuple[list[str], dict[str, str]]:
        env = clean_env(
            JETDAG_NATS=url, JETDAG_QUEUE=QUEUE, JETDAG_CONCURRENCY=str(concurrency), JETDAG_HEARTBEAT=str(HEARTBEAT)
        )
        if self.name == "python":
            argv = [JETDAG, "worker", "--nats", url, "--queue", QUEUE, "--import", "tests.conformance.handlers",
                    "--heartbeat", str(HEARTBEAT), "--concurrency", str(concurrency)]  # fmt: skip
            return argv, clean_env()
        if self.name == "node":
            return ["node", str(NODE_DIR / "worker.js")], env
        command = os.environ.get(CUSTOM_ENV, "")
        return ["/bin/sh", "-c", command], env

    def check(self) -> None:
        """Fail (never skip) when what the implementation needs is missing, saying how to get it."""
        if self.name != "node":
            return
        if shutil.which("node") is None:
            pytest.fail(
                "the Node worker cannot run: `node` is not installed. Install Node.js 18 or later "
                "(`apt-get install nodejs npm`), then `cd deploy/workers/node && npm ci`."
            )
        if not (NODE_DIR / "node_modules" / "nats").is_dir() or not (NODE_DIR / "node_modules" / "@msgpack").is_dir():
            pytest.fail(
                f"the Node worker cannot run: its dependencies are not installed in {NODE_DIR / 'node_modules'}. "
                "Run `cd deploy/workers/node && npm ci`."
            )


def implementations() -> list[Implementation]:
    names = ["python", "node"] + (["custom"] if os.environ.get(CUSTOM_ENV) else [])
    return [Implementation(n) for n in names]


@dataclass
class WorkerProcess:
    """A worker process under test; its output goes to `log_path`."""

    impl: Implementation
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        """Its exit code; the process is killed (and the test fails) if it is still there after `timeout`."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the {self.impl.name} worker did not exit within {timeout}s of its signal:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Conformance:
    """One test's NATS (with jetdag's streams and buckets), the implementation under test and its processes."""

    impl: Implementation
    url: str
    nc: NATS
    js: JetStreamContext
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    # --- the worker --------------------------------------------------------------------------------------

    async def start(self, concurrency: int = 8) -> WorkerProcess:
        """Start a worker; returns once its first heartbeat is in `jd_workers` (it is subscribed by then)."""
        self.impl.check()
        before = await self.entries()
        worker = self.spawn(concurrency)
        proc = worker.proc

        async def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the {self.impl.name} worker exited with {proc.returncode}:\n{worker.log()}")
            return any(before.get(key) != info for key, info in (await self.entries()).items())  # a new beat

        await until(ready, timeout=READY_WITHIN, interval=0.05)
        return worker

    def spawn(self, concurrency: int) -> WorkerProcess:
        """The worker process, started in a process group of its own (stopped in the fixture's teardown)."""
        argv, env = self.impl.command(self.url, concurrency)
        log_path = self.tmp / f"worker-{self.impl.name}-{len(self.workers)}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        worker = WorkerProcess(self.impl, proc, log_path)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.kill()

    async def entries(self) -> dict[str, dict[str, Any]]:
        """Every heartbeat in `jd_workers`, by key."""
        kv = await self.js.key_value(S.WORKERS_KV)
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            if entry.value:
                out[key] = msgpack.unpackb(entry.value, raw=False)
        return out

    async def entry(self) -> tuple[str, dict[str, Any]]:
        """The one worker's heartbeat (each test has a NATS of its own) and its key."""
        entries = await self.entries()
        assert len(entries) == 1, f"expected one heartbeat in {S.WORKERS_KV}, found {sorted(entries)}"
        ((key, info),) = entries.items()
        return key, info

    # --- the engine's part ---------------------------------------------------------------------------------

    def task(
        self, handler: str, payload: Any, *, priority: int = 5, run_id: str | None = None, task: str = "t",
        attempt: int = 1,
    ) -> TaskMessage:  # fmt: skip
        run_id = run_id or new_run_id()
        reply = S.event_subject(S.partition_of(run_id), run_id)
        return TaskMessage(
            run_id, "t_conformance", task, attempt, handler, payload, {"p": 1}, reply, queue=QUEUE, priority=priority
        )

    async def publish(self, msg: TaskMessage) -> TaskMessage:
        """Dispatch `msg` as the engine does: JetStream, on its queue, priority and handler's subject."""
        await self.publish_raw(S.task_subject(msg.queue, msg.priority, msg.handler), encode_task(msg))
        return msg

    async def publish_raw(self, subject: str, data: bytes) -> None:
        await self.js.publish(subject, data)

    async def interrupt(self, msg: TaskMessage) -> None:
        await self.nc.publish(S.INTERRUPT, encode_interrupt(msg.run_id, msg.task, msg.attempt))
        await self.nc.flush()

    # --- what comes back ---------------------------------------------------------------------------------

    async def replies(self, msg: TaskMessage) -> list[RawStreamMsg]:
        """Everything JD_EVENTS holds on the task's reply subject, oldest first."""
        return await stream_messages(self.js, S.EVENTS, msg.reply)

    async def results(self, msg: TaskMessage) -> list[dict[str, Any]]:
        """The result events of `msg`'s attempt (by their Nats-Msg-Id), oldest first."""
        want = f"{msg.run_id}:{msg.task}:{msg.attempt}:result"
        replies = await self.replies(msg)
        return [msgpack.unpackb(m.data, raw=False) for m in replies if m.headers and m.headers[MSG_ID] == want]

    async def result(self, msg: TaskMessage, timeout: float = 10.0) -> dict[str, Any]:
        """The result of `msg`'s attempt, once there is one."""

        async def one() -> dict[str, Any] | None:
            got = await self.results(msg)
            assert len(got) <= 1, f"several results of one attempt: {got}"
            return got[0] if got else None

        try:
            return await until(one, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.logs()}") from None

    async def tasks_left(self) -> int:
        """Messages JD_TASKS still holds: a work queue drops a message once it is acked or terminated."""
        return (await self.js.stream_info(S.TASKS)).state.messages

    async def drained(self, timeout: float = 10.0) -> None:
        async def empty() -> bool:
            assert await self.tasks_left() == 0, f"JD_TASKS holds {await self.tasks_left()} message(s)"
            return True

        try:
            await until(empty, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.logs()}") from None

    def logs(self) -> str:
        return "\n".join(w.log() for w in self.workers)
