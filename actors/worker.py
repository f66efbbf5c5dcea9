"""Worker: pulls tasks of its queues, highest priority first, runs handlers, reports results.

One loop owns fetching, in-progress acks and the final ack; handlers run beside it as tasks (sync
handlers in threads). The result event is published, and its publish acknowledged, before the task
message is acked: a crash in between makes JetStream redeliver the task, never lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Coroutine
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from jetdag.engine import builtins as _builtins  # noqa: F401  (registers noop, sleep, command, http)
from jetdag.engine import subjects as S
from jetdag.engine.errors import MessageRejected
from jetdag.engine.events import Event, TaskFailed, TaskStarted, TaskSucceeded
from jetdag.engine.handlers import Fail, Retry, TaskContext, call, get_handler, registered
from jetdag.engine.messages import MSG_ID, TaskMessage, decode_task, encode_event, msg_id, pack
from jetdag.engine.nats.pull import Fetcher

from .rejects import reject

log = logging.getLogger(__name__)

ACK_WAIT = 30.0
"""A task whose worker stops sending in-progress acks for this long is redelivered elsewhere."""


LINGER = 0.05
"""Seconds a fetch right after a doorbell waits for the message to become visible to the consumer."""
HEARTBEAT = 5.0
"""Seconds between heartbeats; in-progress acks go out every other beat (well inside ACK_WAIT)."""


def task_consumer_config(queue: str, priority: int) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        durable_name=S.task_consumer(queue, priority),
        filter_subject=S.task_subject(queue, priority),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_wait=ACK_WAIT,
        max_deliver=-1,
        max_ack_pending=20_000,
    )


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


class Worker:
    """Serves `queues` with at most `concurrency` tasks at once. `run()` until `stop()`; `stop()` drains."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        queues: list[str],
        *,
        concurrency: int = 32,
        worker_id: str | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        self.nc, self.js, self.queues, self.concurrency = nc, js, queues, concurrency
        self.id = worker_id or new_worker_id()
        self.drain_timeout = drain_timeout
        self.running: dict[asyncio.Task[None], Msg] = {}
        self.done_count = 0
        self._fetchers: dict[tuple[str, int], Fetcher] = {}
        self._maybe: set[tuple[str, int]] = set()  # priorities that may hold tasks
        self._rings: dict[tuple[str, int], int] = {}
        self._fresh: set[tuple[str, int]] = set()  # rang since the last sweep
        self._bell = asyncio.Event()
        self._slot = asyncio.Event()
        self._stopping = asyncio.Event()
        self._bg: set[asyncio.Task[None]] = set()
        self.started_at = time.time()

    async def run(self) -> None:
        for queue in self.queues:
            for prio in S.PRIORITIES:
                await self.js.add_consumer(S.TASKS, config=task_consumer_config(queue, prio))
                fetcher = Fetcher(self.nc, S.TASKS, S.task_consumer(queue, prio))
                await fetcher.start()
                self._fetchers[(queue, prio)] = fetcher
        self._maybe = set(self._fetchers)
        # The doorbell: core NATS sees every publish to the queue, so an idle worker wakes at once.
        bells = [await self.nc.subscribe(f"jd.task.{q}.*", cb=self._ring) for q in self.queues]
        ticker = asyncio.create_task(self._keep_alive(), name="worker keep-alive")
        try:
            await self._loop()
        finally:
            ticker.cancel()
            for sub in bells:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await self._drain()
            with contextlib.suppress(Exception):
                await (await self.js.key_value(S.WORKERS_KV)).delete(self.id)
            for fetcher in self._fetchers.values():
                await fetcher.stop()

    def stop(self) -> None:
        """Stop taking tasks; `run()` returns after the running ones finish (or the drain timeout)."""
        self._stopping.set()
        self._bell.set()
        self._slot.set()

    async def _ring(self, msg: Msg) -> None:
        queue, prio = msg.subject.split(".")[2:4]
        if prio.isdigit():
            key = (queue, int(prio))
            self._maybe.add(key)
            self._fresh.add(key)
            self._rings[key] = self._rings.get(key, 0) + 1
        self._bell.set()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self.running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            self._bell.clear()
            got = 0
            fresh, self._fresh = self._fresh, set()
            for key in sorted(self._maybe, key=lambda k: -k[1]):
                rings = self._rings.get(key, 0)
                # A bell can ring before JetStream lets consumers see the message: linger briefly then.
                linger = LINGER if key in fresh else 0.0
                msgs = await self._fetchers[key].fetch(free - got, linger=linger, wait=1.0)
                if len(msgs) < free - got and self._rings.get(key, 0) == rings:
                    self._maybe.discard(key)  # empty, and nothing was published to it meanwhile
                for msg in msgs:
                    self._start(msg)
                got += len(msgs)
                if got >= free:
                    break
            if got == 0:
                # Redeliveries ring no bell: look at every priority again at least once a second.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._bell.wait()
                if not self._bell.is_set():
                    self._maybe = set(self._fetchers)

    def _start(self, msg: Msg) -> None:
        task = asyncio.create_task(self._execute(msg))
        self.running[task] = msg
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self.done_count += 1
        self._slot.set()

    async def _keep_alive(self) -> None:
        """Heartbeat into `jd_workers` and in-progress acks for running tasks, every few seconds."""
        kv = await self.js.key_value(S.WORKERS_KV)
        beat = 0
        while True:
            info = {
                "id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "queues": self.queues,
                "handlers": registered(), "running": len(self.running), "done": self.done_count,
                "concurrency": self.concurrency, "started": self.started_at, "beat": time.time(),
            }  # fmt: skip
            with contextlib.suppress(Exception):
                await kv.put(self.id, pack(info))
            if beat % 2 == 1:
                for msg in list(self.running.values()):
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
            beat += 1
            await asyncio.sleep(HEARTBEAT)

    async def _drain(self) -> None:
        if not self.running:
            return
        log.info("worker %s: draining %d running task(s)", self.id, len(self.running))
        _, pending = await asyncio.wait(list(self.running), timeout=self.drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _execute(self, msg: Msg) -> None:
        try:
            task = decode_task(msg.subject, msg.data)
        except MessageRejected as err:
            await reject(self.js, msg, err)
            return
        # Published now, beside the handler (a bare coroutine would only go out with the result),
        # so the run shows the task running while it runs; its ack is awaited with the result's.
        started = asyncio.ensure_future(
            self._publish(task, TaskStarted(task.run_id, task.task, task.attempt, time.time(), self.id))
        )
        try:
            outcome = await self._run_handler(task)
        except asyncio.CancelledError:
            # Shutdown past the drain timeout: hand the task back at once rather than after AckWait.
            started.cancel()
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        try:
            await asyncio.gather(started, self._publish(task, outcome))
            await msg.ack()
        except Exception as exc:  # not acked: JetStream redelivers the task and the engine dedupes
            log.warning("task %s/%s#%d: result not published: %s", task.run_id, task.task, task.attempt, exc)

    async def _run_handler(self, task: TaskMessage) -> Event:
        now, args = time.time, (task.run_id, task.task, task.attempt)
        fn = get_handler(task.handler)
        if fn is None:
            error = (
                f"handler {task.handler!r} is not registered on worker {self.id} (it knows {', '.join(registered())}); "
                f"start a worker with --import MODULE that defines it"
            )
            return TaskFailed(*args, now(), error, self.id)
        ctx = TaskContext(
            run_id=task.run_id, workflow=task.workflow, task=task.task, attempt=task.attempt,
            payload=task.payload, params=task.params, info=task.info, job=task.job, emit=self._emitter(task),
        )  # fmt: skip
        try:
            result = await asyncio.wait_for(call(fn, ctx), task.timeout)
        except TimeoutError as exc:
            if task.timeout is None:
                return _failure(task, exc, self.id)
            return TaskFailed(*args, now(), f"timed out after {task.timeout:g}s", self.id)
        except Retry as r:
            return TaskFailed(*args, now(), r.reason or "retry requested", self.id, retry_delay=r.delay)
        except Fail as f:
            return TaskFailed(*args, now(), str(f) or "failed", self.id, retryable=False)
        except Exception as exc:
            return _failure(task, exc, self.id)
        return TaskSucceeded(*args, now(), self.id, result)

    async def _publish(self, task: TaskMessage, event: Event) -> None:
        kind = "started" if isinstance(event, TaskStarted) else "result"
        try:
            data = encode_event(event)
        except (TypeError, ValueError, msgpack.PackException) as exc:
            # A result the engine cannot store is the handler's failure, reported as such.
            error = f"result of handler {task.handler!r} cannot be serialized: {exc}"
            data = encode_event(TaskFailed(task.run_id, task.task, task.attempt, time.time(), error, self.id, False))
        headers = {MSG_ID: msg_id(task.run_id, task.task, task.attempt, kind)}
        await (await self.js.publish_async(task.reply, data, headers=headers))

    def _emitter(self, task: TaskMessage) -> Any:
        loop = asyncio.get_running_loop()
        subject = task.reply + ".info"

        def emit(kind: str, data: dict[str, Any]) -> None:
            body = {"v": 1, "k": kind, "run": task.run_id, "task": task.task, "attempt": task.attempt,
                    "ts": time.time(), "worker": self.id, "data": data}  # fmt: skip
            loop.call_soon_threadsafe(self._spawn, self.nc.publish(subject, pack(body)))

        return emit

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)


def _failure(task: TaskMessage, exc: BaseException, worker: str) -> TaskFailed:
    tb = "".join(traceback.format_exception(exc)[-3:])[-2000:]
    details = dict(getattr(exc, "details", None) or {})
    details["traceback"] = tb
    return TaskFailed(
        task.run_id, task.task, task.attempt, time.time(), f"{type(exc).__name__}: {exc}", worker, details=details
    )
