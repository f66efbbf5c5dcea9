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
from collections import Counter, OrderedDict
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from jetdag.engine import builtins as _builtins  # noqa: F401  (registers noop, sleep, command, http)
from jetdag.engine import subjects as S
from jetdag.engine.blobs import BLOB_ABOVE, Blobs, blob_name, has_refs
from jetdag.engine.errors import MessageRejected
from jetdag.engine.events import Event, TaskFailed, TaskStarted, TaskSucceeded
from jetdag.engine.handlers import (
    Fail,
    Handler,
    Retry,
    TaskContext,
    call,
    get_handler,
    handlers_version,
    options_of,
    registered,
)
from jetdag.engine.messages import MSG_ID, TaskMessage, decode_task, encode_event, msg_id, pack
from jetdag.engine.nats.publisher import Publisher, acked
from jetdag.engine.nats.pull import Fetcher
from jetdag.engine.nats.setup import farewell
from jetdag.engine.stores.runs import RunStore
from jetdag.engine.workers import HEARTBEAT, RunningTask, superseded

from .reaper import fail_running
from .rejects import reject
from .supervisor import cancel

log = logging.getLogger(__name__)

ACK_WAIT = 30.0
"""A task whose worker stops sending in-progress acks for this long is redelivered elsewhere."""


LINGER = 0.05
"""Seconds a fetch right after a doorbell waits for the message to become visible to the consumer."""
PROGRESS_EVERY = ACK_WAIT / 3
"""Seconds between in-progress acks for running tasks (well inside ACK_WAIT)."""
PROMPT_BEAT = 0.25
"""A task that starts is announced by a beat this soon after the previous one (not a whole interval later):
a worker killed right after taking a task must already have named it for the reaper to reclaim it."""
REMEMBERED_INTERRUPTS = 10_000
"""Interrupted attempts a worker remembers, so one it takes from the queue after the interrupt is not run."""
CANCELLED = "cancelled: the run was cancelled while the task ran"
STARTED_AFTER = 0.1
"""An attempt still running this long after it began says so (task.started), and the run shows it running;
a shorter one's start rides on its result instead, which spares the engine a step (a third of its work
for a no-op task)."""
"""The error of an attempt whose handler was interrupted (`jd.cmd.interrupt`)."""

LOOK_EVERY = 5.0
"""Seconds between looks, while idle, for tasks the doorbell did not announce (core NATS may drop a ring)."""
STALE_AFTER = 10.0
"""A task message older than this is checked against its run's snapshot before it runs, as a redelivery is."""
HANDED_BACK_FOR = 5.0
"""Seconds a task stays out of sight after a worker that no longer has its handler (a reload took it away) handed
it back, untried, to the workers that have it."""

Attempt = tuple[str, str, int]
"""(run, task, attempt)"""
Route = tuple[str, int, str, str]
"""(queue, priority, handler, labels token of what its tasks require): one task subject and its consumer."""


def task_consumer_config(queue: str, priority: int, handler: str, requires: str = "") -> js_api.ConsumerConfig:
    labels = S.token_labels(requires)
    return js_api.ConsumerConfig(
        durable_name=S.task_consumer(queue, priority, handler, labels),
        filter_subject=S.task_subject(queue, priority, handler, labels),
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
        heartbeat: float = HEARTBEAT,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.nc, self.js, self.queues, self.concurrency = nc, js, queues, concurrency
        self.labels: dict[str, str] = dict(labels or {})
        """What this worker offers (`--label gpu=true`): it takes the tasks that require a subset of them."""
        self.publisher = Publisher(nc)
        self.blobs = Blobs(js)
        self.id = worker_id or new_worker_id()
        self.drain_timeout = drain_timeout
        self.heartbeat = heartbeat
        self.running: dict[asyncio.Task[None], Msg] = {}
        self._busy: Counter[str] = Counter()
        """Attempts running now, by handler: a handler registered with a `concurrency` gets no more."""
        self._handler_of: dict[asyncio.Task[None], str] = {}
        self.attempts: dict[asyncio.Task[None], RunningTask] = {}
        """The attempts running now, as the heartbeat names them."""
        self.skipped = 0
        """Redelivered task messages acked without running: a newer attempt exists or the run is over."""
        self._runs: RunStore | None = None
        self._announce = asyncio.Event()  # a task started since the last beat
        self.done_count = 0
        self._fetchers: dict[Route, Fetcher] = {}
        """One per queue, priority and handler this worker has: it never receives a task it cannot run."""
        self._maybe: set[Route] = set()  # routes that may hold tasks
        self._rings: dict[Route, int] = {}
        self._fresh: set[Route] = set()  # rang since the last sweep
        self._new: set[Route] = set()  # found to hold tasks this worker can run, no consumer yet
        self._looked = 0.0
        self._bell = asyncio.Event()
        self._slot = asyncio.Event()
        self._stopping = asyncio.Event()
        self._bg: set[asyncio.Task[None]] = set()
        self.started_at = time.time()
        self._handlers: dict[Attempt, asyncio.Future[Event]] = {}
        """The handler of each attempt running now, for interrupts."""
        self._interrupted: OrderedDict[Attempt, None] = OrderedDict()
        self.interrupts = 0
        """Handlers stopped because their run was cancelled."""

    async def run(self) -> None:
        self._runs = await RunStore.open(self.nc, self.js)
        await self._replace_predecessor()
        await self._look()
        # The doorbell: core NATS sees every publish to the queue, so an idle worker wakes at once.
        bells = [await self.nc.subscribe(f"jd.task.{q}.>", cb=self._ring) for q in self.queues]
        bells.append(await self.nc.subscribe(S.INTERRUPT, cb=self._on_interrupt))
        ticker = asyncio.create_task(self._keep_alive(), name="worker keep-alive")
        try:
            await self._loop()
        finally:
            for sub in bells:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            try:
                await self._drain()  # still beating: a draining worker is not presumed dead
            finally:
                await cancel(ticker, owner=f"worker {self.id}")  # no beat may land after the delete below
            await farewell(self._leave())
            for fetcher in self._fetchers.values():
                await fetcher.stop()

    async def _look(self) -> None:
        """Find the routes of this worker's queues that hold tasks it can run and that it has no consumer for
        yet: what was queued before it started, or for a handler registered since, or missed by the doorbell."""
        self._looked = time.monotonic()
        for queue in self.queues:
            info = await self.js.stream_info(S.TASKS, subjects_filter=f"jd.task.{queue}.>")
            for subject in info.state.subjects or {}:
                route = S.task_route(subject)
                if route is not None and route not in self._fetchers and self._can_take(route):
                    self._new.add(route)

    async def _open_new(self) -> None:
        """A consumer and a fetcher for each route found since the last time. Consumers are made per route as
        tasks come: one per queue, priority and handler up front would be thousands for a module of handlers."""
        while self._new:
            route = self._new.pop()
            if route in self._fetchers:
                continue
            config = task_consumer_config(*route)
            await self.js.add_consumer(S.TASKS, config=config)
            fetcher = Fetcher(self.nc, S.TASKS, str(config.durable_name))
            await fetcher.start()
            self._fetchers[route] = fetcher
            self._maybe.add(route)
            self._fresh.add(route)

    async def _replace_predecessor(self) -> None:
        """A worker started under the id of one that died (a pod's name, fib-flow's pod_id) takes its place at
        once: the attempts the other last said it ran are failed for retry now, not after three missed beats.
        The id must be unique among live workers: the other's late results are recorded and not applied."""
        try:
            entry = await (await self.js.key_value(S.WORKERS_KV)).get(self.id)
        except KeyNotFoundError:
            return
        try:
            info = msgpack.unpackb(entry.value or b"", raw=False)
        except Exception:  # not a heartbeat: there is nothing to take over
            return
        if not isinstance(info, dict):
            return
        host = info.get("host") or "an unknown host"
        error = f"worker {self.id} on {host} was replaced by a new worker of the same id"
        tasks = await fail_running(
            self.publisher, self.id, info, error, replaced_by=f"{socket.gethostname()}-{os.getpid()}"
        )
        log.warning("%s: failed %d attempt(s) it ran for retry", error, len(tasks))

    async def handlers_changed(self) -> None:
        """After a reload: stop fetching the tasks of handlers gone from here (new ones are found as their tasks
        come) and say the new handler set at the next beat, soon."""
        for route in [r for r in self._fetchers if get_handler(r[2]) is None]:
            fetcher = self._fetchers.pop(route)
            self._maybe.discard(route)
            await fetcher.stop()
        self._looked = 0.0  # look for tasks of new handlers at the next idle moment
        self._bell.set()
        self._announce.set()

    async def _leave(self) -> None:
        await (await self.js.key_value(S.WORKERS_KV)).delete(self.id)

    def stop(self) -> None:
        """Stop taking tasks; `run()` returns after the running ones finish (or the drain timeout)."""
        self._stopping.set()
        self._bell.set()
        self._slot.set()

    def _can_take(self, route: Route) -> bool:
        """This worker has the route's handler and every label its tasks require."""
        if get_handler(route[2]) is None:
            return False
        return not route[3] or S.token_labels(route[3]).items() <= self.labels.items()

    async def _ring(self, msg: Msg) -> None:
        route = S.task_route(msg.subject)
        if route in self._fetchers:
            self._maybe.add(route)
            self._fresh.add(route)
            self._rings[route] = self._rings.get(route, 0) + 1
            self._bell.set()
        elif route is not None and self._can_take(route):
            self._new.add(route)  # the first task of this priority and handler since the worker started
            self._bell.set()
        # else: a task for a handler of another worker

    async def _on_interrupt(self, msg: Msg) -> None:
        """A run was cancelled: stop the handler of that attempt if it runs here, and remember the attempt
        in case its task message is still on its way to this worker."""
        try:
            body = msgpack.unpackb(msg.data, raw=False)
            key: Attempt = (str(body["run"]), str(body["task"]), int(body["attempt"]))
        except Exception as exc:  # best effort: a malformed interrupt stops nothing
            log.warning("worker %s: malformed interrupt ignored: %s", self.id, exc)
            return
        self._interrupted[key] = None
        while len(self._interrupted) > REMEMBERED_INTERRUPTS:
            self._interrupted.popitem(last=False)
        handler = self._handlers.get(key)
        if handler is not None and not handler.done():
            log.info("worker %s: interrupting %s/%s#%d: its run was cancelled", self.id, *key)
            handler.cancel()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self.running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            self._bell.clear()
            if not self.nc.is_connected:
                # Every fetch would wait out its timeout, one priority after another: wait for NATS instead.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._bell.wait()
                continue
            if self._new:
                try:
                    await self._open_new()
                except Exception as exc:  # NATS trouble: the route is found again by the next look
                    log.warning("worker %s: a consumer for new tasks could not be made: %s", self.id, exc)
            got = 0
            fresh, self._fresh = self._fresh, set()
            for key in sorted(self._maybe, key=lambda k: -k[1]):
                if self._stopping.is_set():
                    break
                want = free - got
                cap = options_of(key[2]).concurrency
                if cap is not None:
                    want = min(want, cap - self._busy[key[2]])
                    if want <= 0:
                        continue  # the handler's own limit: its tasks wait for one of its attempts to end
                rings = self._rings.get(key, 0)
                # A bell can ring before JetStream lets consumers see the message: linger briefly then.
                linger = LINGER if key in fresh else 0.0
                msgs = await self._fetchers[key].fetch(want, linger=linger, wait=1.0)
                if len(msgs) < want and self._rings.get(key, 0) == rings:
                    self._maybe.discard(key)  # empty, and nothing was published to it meanwhile
                for msg in msgs:
                    self._start(msg, key[2])
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
                    if time.monotonic() - self._looked >= LOOK_EVERY:
                        with contextlib.suppress(Exception):  # NATS trouble: look again next time
                            await self._look()

    def _start(self, msg: Msg, handler: str) -> None:
        task = asyncio.create_task(self._execute(msg))
        self.running[task] = msg
        self._busy[handler] += 1
        self._handler_of[task] = handler
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self.attempts.pop(task, None)
        handler = self._handler_of.pop(task)
        self._busy[handler] -= 1
        self.done_count += 1
        self._slot.set()
        if options_of(handler).concurrency is not None:
            self._bell.set()  # its waiting tasks may be fetched now

    def heartbeat_info(self) -> dict[str, Any]:
        """The map this worker puts into `jd_workers` (its shape is in `jetdag.engine.workers`)."""
        return {
            "v": 1, "id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "queues": self.queues,
            "handlers": registered(), "handlers_version": handlers_version(), "labels": self.labels,
            "concurrency": self.concurrency, "interval": self.heartbeat,
            "running": [a.to_dict() for a in list(self.attempts.values())], "done": self.done_count,
            "started": self.started_at, "beat": time.time(),
        }  # fmt: skip

    async def _keep_alive(self) -> None:
        """Heartbeat into `jd_workers` every `heartbeat` seconds (sooner after a task starts), and
        in-progress acks for running tasks every PROGRESS_EVERY seconds."""
        kv: KeyValue | None = None
        loop = asyncio.get_running_loop()
        next_progress = loop.time() + PROGRESS_EVERY
        while True:
            self._announce.clear()
            with contextlib.suppress(Exception):  # NATS trouble: beat again next time, never stop beating
                kv = kv or await self.js.key_value(S.WORKERS_KV)
                await kv.put(self.id, pack(self.heartbeat_info()))
            beat_at = loop.time()
            next_beat = beat_at + self.heartbeat
            while (now := loop.time()) < next_beat:
                if now >= next_progress:
                    for msg in list(self.running.values()):
                        with contextlib.suppress(Exception):
                            await msg.in_progress()
                    next_progress = now + PROGRESS_EVERY
                if self._announce.is_set():
                    next_beat = min(next_beat, beat_at + min(PROMPT_BEAT, self.heartbeat))
                    await asyncio.sleep(max(0.0, min(next_beat, next_progress) - now))
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(next_beat, next_progress) - now):
                        await self._announce.wait()

    async def _drain(self) -> None:
        if not self.running:
            return
        log.info("worker %s: draining %d running task(s)", self.id, len(self.running))
        _, pending = await asyncio.wait(list(self.running), timeout=self.drain_timeout)
        await cancel(*pending, owner=f"worker {self.id}")

    async def _execute(self, msg: Msg) -> None:
        try:
            task = decode_task(msg.subject, msg.data)
        except MessageRejected as err:
            await reject(self.js, msg, err)
            return
        again, waited = _deliveries(msg) > 1, _waited(msg)
        if (again or waited > STALE_AFTER) and (why := await self._superseded(task)) is not None:
            # The attempt this message carries was given up on (its first worker was presumed dead
            # and a newer attempt dispatched) or is settled: running it again would do the work twice.
            # A task that waited long (for a worker with its handler, say) may belong to a run that was
            # cancelled meanwhile: one read of the snapshot, only for those.
            how = f"delivered again ({_deliveries(msg)} deliveries)" if again else f"queued for {waited:.0f}s"
            log.info(
                "task %s/%s#%d %s but %s: acked without running it", task.run_id, task.task, task.attempt, how, why
            )
            self.skipped += 1
            with contextlib.suppress(Exception):
                await msg.ack()
            return
        fn = get_handler(task.handler)
        if fn is None:
            # Its handler is gone from this worker (it was there when the consumer was made): hand the task
            # back untried; a worker that has it takes it, and no attempt is counted.
            log.warning("task %s/%s#%d: handler %r is no longer here: handed back", task.run_id, task.task,
                        task.attempt, task.handler)  # fmt: skip
            with contextlib.suppress(Exception):
                await msg.nak(delay=HANDED_BACK_FOR)
            return
        key: Attempt = (task.run_id, task.task, task.attempt)
        if key in self._interrupted:
            # Its run was cancelled before this worker took it: the run has no use for it any more.
            log.info("task %s/%s#%d: its run was cancelled: acked without running it", *key)
            self.skipped += 1
            with contextlib.suppress(Exception):
                await msg.ack()
            return
        me = asyncio.current_task()
        if me is not None:
            self.attempts[me] = RunningTask(task.run_id, task.task, task.attempt, task.reply, time.time())
            self._announce.set()
        begun = time.time()
        started = asyncio.ensure_future(self._say_started(task, begun))
        started.add_done_callback(_quietly)
        # The handler is a task of its own so that an interrupt cancels it alone, never the publishing below.
        handler = self._handlers[key] = asyncio.ensure_future(self._run_handler(task, fn))
        try:
            outcome = await handler
        except asyncio.CancelledError:
            if me is None or me.cancelling() or key not in self._interrupted:
                # Shutdown past the drain timeout: hand the task back at once rather than after AckWait.
                started.cancel()
                with contextlib.suppress(Exception):
                    await msg.nak()
                raise
            self.interrupts += 1
            outcome = TaskFailed(*key, time.time(), CANCELLED, self.id, retryable=False)
        finally:
            self._handlers.pop(key, None)
        outcome = await self._by_reference(task, outcome)
        # The result says when the attempt began, whether or not its task.started went out (or still goes).
        started.cancel()
        try:
            await self._publish(task, replace(outcome, started=begun))
            await msg.ack()
        except Exception as exc:  # not acked: JetStream redelivers the task and the engine dedupes
            log.warning("task %s/%s#%d: result not published: %s", task.run_id, task.task, task.attempt, exc)

    async def _by_reference(self, task: TaskMessage, outcome: Event) -> Event:
        """A result over BLOB_ABOVE bytes goes to jd_blobs, and its event carries the reference (engine/blobs.py)."""
        result = outcome.result if isinstance(outcome, TaskSucceeded) else None
        if result is None or isinstance(result, bool | int | float):
            return outcome
        try:
            data = pack(result)
        except (TypeError, ValueError, msgpack.PackException):
            return outcome  # not serializable: _publish reports it as the handler's failure
        if len(data) <= BLOB_ABOVE:
            return outcome
        try:
            ref = await self.blobs.put(blob_name(task.run_id, task.task, task.attempt, "result"), None, data)
        except Exception as exc:
            error = f"result of handler {task.handler!r} ({len(data):,} bytes) not stored in {S.BLOBS}: {exc}"
            return TaskFailed(task.run_id, task.task, task.attempt, time.time(), error, self.id)
        return replace(outcome, result=ref)

    async def _say_started(self, task: TaskMessage, begun: float) -> None:
        """task.started, once the attempt has run STARTED_AFTER: a shorter one's start rides on its result."""
        await asyncio.sleep(STARTED_AFTER)  # wait-ok: a delay by design, cancelled when the result comes first
        await self._publish(task, TaskStarted(task.run_id, task.task, task.attempt, begun, self.id))

    async def _superseded(self, task: TaskMessage) -> str | None:
        """Why this redelivered attempt is stale, from the run's snapshot; None (run it) when unsure."""
        if self._runs is None:
            return None
        try:
            snapshot, _ = await self._runs.load(task.run_id)
        except Exception as exc:
            log.debug("task %s/%s#%d: snapshot not readable: %s", task.run_id, task.task, task.attempt, exc)
            return None
        return None if snapshot is None else superseded(snapshot, task.task, task.attempt)

    async def _run_handler(self, task: TaskMessage, fn: Handler) -> Event:
        now, args = time.time, (task.run_id, task.task, task.attempt)
        payload = task.payload
        if has_refs(payload):
            try:
                payload = await self.blobs.resolve(payload)
            except Exception as exc:  # expired, or the store unreachable: nothing to run the handler on
                error = f"the payload refers to a value in {S.BLOBS} that cannot be read: {type(exc).__name__}: {exc}"
                return TaskFailed(*args, now(), error, self.id)
        ctx = TaskContext(
            run_id=task.run_id, workflow=task.workflow, task=task.task, attempt=task.attempt,
            payload=payload, params=task.params, info=task.info, job=task.job, emit=self._emitter(task),
            last_checkpoint=await self._last_checkpoint(task) if task.attempt > 1 else None,
        )  # fmt: skip
        # The task's own timeout, else its handler's (global < handler < task).
        timeout = task.timeout if task.timeout is not None else options_of(task.handler).timeout
        try:
            result = await asyncio.wait_for(call(fn, ctx), timeout)
        except asyncio.CancelledError:
            ctx.cancel()  # a sync handler's thread goes on: it can see this and stop
            raise
        except TimeoutError as exc:
            ctx.cancel()
            if timeout is None:
                return _failure(task, exc, self.id)
            return TaskFailed(*args, now(), f"timed out after {timeout:g}s", self.id)
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
        for tries_left in (2, 1, 0):
            # A publish lost with a dying server is never answered: send it again (the same id is deduped).
            try:
                await acked([await self.publisher.publish(task.reply, data, headers)])
                return
            except TimeoutError:
                if not tries_left:
                    raise

    async def _last_checkpoint(self, task: TaskMessage) -> dict[str, Any] | None:
        """The data of the last checkpoint an earlier attempt of `task` saved: one read of JD_EVENTS, where each
        task's checkpoints have a subject of their own."""
        try:
            msg = await self.js.get_msg(S.EVENTS, subject=S.checkpoint_subject(task.reply, task.task))
            data = msgpack.unpackb(msg.data or b"", raw=False).get("data")
        except NotFoundError:
            return None
        except Exception as exc:  # the attempt runs without it rather than not at all
            log.warning("task %s/%s#%d: last checkpoint not readable: %s", task.run_id, task.task, task.attempt, exc)
            return None
        return data if isinstance(data, dict) else None

    def _emitter(self, task: TaskMessage) -> Any:
        loop = asyncio.get_running_loop()
        info, checkpoint = task.reply + ".info", S.checkpoint_subject(task.reply, task.task)

        def emit(kind: str, data: dict[str, Any]) -> None:
            body = {"v": 1, "k": kind, "run": task.run_id, "task": task.task, "attempt": task.attempt,
                    "ts": time.time(), "worker": self.id, "data": data}  # fmt: skip
            subject = checkpoint if kind == "task.checkpoint" else info
            loop.call_soon_threadsafe(self._spawn, self.nc.publish(subject, pack(body)))

        return emit

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.ensure_future(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)


def _quietly(future: asyncio.Future[None]) -> None:
    # A task.started that failed to go out changes nothing (the result carries the start): retrieve it.
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.debug("task.started not published: %s", exc)


def _waited(msg: Msg) -> float:
    """Seconds since JetStream stored the task message (0 when unknown)."""
    try:
        stamp = msg.metadata.timestamp
    except Exception:
        return 0.0
    return max(0.0, time.time() - stamp.timestamp()) if stamp is not None else 0.0


def _deliveries(msg: Msg) -> int:
    try:
        return msg.metadata.num_delivered or 1
    except Exception:
        return 1


def _failure(task: TaskMessage, exc: BaseException, worker: str) -> TaskFailed:
    tb = "".join(traceback.format_exception(exc)[-3:])[-2000:]
    details = dict(getattr(exc, "details", None) or {})
    details["traceback"] = tb
    return TaskFailed(
        task.run_id, task.task, task.attempt, time.time(), f"{type(exc).__name__}: {exc}", worker, details=details
    )
