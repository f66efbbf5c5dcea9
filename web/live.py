"""The live hub: one core-NATS subscription to every step record, fanned out to the SSE clients of this process,
and one to the handlers' progress events, kept as the latest progress per running task.

Each browser (or API client) gets a bounded queue. The hub never waits for a client: a client whose
queue is full is dropped (its stream ends and the browser's EventSource reconnects, receiving the
current state first), so one slow or stalled reader costs at most its queue, never the process's
memory or the other clients' latency. Step records are not replayed on reconnect (core NATS keeps
no history here); the pages re-render the current state instead, which is all a dashboard needs.

Progress is coalesced rather than queued: a handler may report thousands of times a second, and a
viewer needs only the latest figure. A subscriber that asked for its run's progress gets at most one
marker in its queue at a time, plus the set of tasks that moved; it reads their latest progress from
the hub when it gets round to it. A chatty handler therefore never fills a queue or drops a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from litestar.response.sse import ServerSentEventMessage
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from jetdag.engine.client import Client

log = logging.getLogger(__name__)

STEP_SUBJECT = "jd.evt.*.*.step"
INFO_SUBJECT = "jd.evt.*.*.info"  # handlers' progress, audit and checkpoint events (actors/worker.py `_emitter`)
PROGRESS_KIND = "task.progress"
QUEUE_SIZE = 256
HISTORY_SECONDS = 600  # how far back the overview's step-rate sparkline can look
PING_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
_WORKFLOW_CACHE = 10_000  # run id -> workflow, so a workflow filter costs one KV read per run, not per step
_PROGRESS_RUNS = 2_000  # runs whose latest task progress is kept (least recently reported dropped first)
_PROGRESS_TASKS = 1_000  # tasks per run: bounds memory whatever a sender puts in `task`
_MESSAGE_CHARS = 200  # of a progress message: a status line, not a log


@dataclass(eq=False)
class Subscriber:
    """One connected stream: its filters and its bounded queue (None in the queue ends the stream)."""

    run: str | None = None
    workflow: str | None = None
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: bool = False
    progress: bool = False
    """Whether it wants its run's progress (a marker `{"kind": "progress"}` in the queue; see `take_progress`)."""
    moved: set[str] = field(default_factory=set)
    """Tasks whose progress changed since the last `take_progress`; non-empty while a marker is queued."""

    def wants(self, event: dict[str, Any]) -> bool:
        if self.run is not None and event["run"] != self.run:
            return False
        return self.workflow is None or event.get("workflow") == self.workflow

    async def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event; None when the stream must end. TimeoutError when nothing came within `timeout`."""
        if not self.queue.empty():  # the common case under load: no timer, no task (wait_for made both)
            return self.queue.get_nowait()
        async with asyncio.timeout(timeout):
            return await self.queue.get()

    def take_progress(self) -> set[str]:
        """The tasks whose progress moved since the last call; the next progress event queues a new marker."""
        moved, self.moved = self.moved, set()
        return moved

    def drain(self) -> list[dict[str, Any]]:
        """Whatever else is already queued (a burst is rendered once, not once per step)."""
        out: list[dict[str, Any]] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is None:
                self.queue.put_nowait(None)  # keep the end marker for next()
                break
            out.append(item)
        return out


class Hub:
    """Step records from NATS to every subscriber whose filters match; counts clients, drops, and steps per second."""

    def __init__(self, client: Client, *, queue_size: int = QUEUE_SIZE) -> None:
        self.client = client
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.dropped = 0  # clients dropped for being too slow, since start
        self.received = 0  # step records seen, since start
        self.last_id = ""  # id of the newest event, `<run>:<seq>`
        self._per_second: deque[list[int]] = deque(maxlen=HISTORY_SECONDS)  # [epoch second, count]
        self._workflows: OrderedDict[str, str] = OrderedDict()
        self._progress: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()  # run -> task -> latest
        self._sub: NatsSubscription | None = None
        self._info_sub: NatsSubscription | None = None

    @property
    def clients(self) -> int:
        """Connected SSE clients (for /metrics)."""
        return len(self.subscribers)

    async def start(self) -> None:
        self._sub = await self.client.nc.subscribe(STEP_SUBJECT, cb=self._on_msg)
        self._info_sub = await self.client.nc.subscribe(INFO_SUBJECT, cb=self._on_info)

    async def stop(self) -> None:
        for nats_sub in (self._sub, self._info_sub):
            if nats_sub is not None:
                with contextlib.suppress(Exception):
                    await nats_sub.unsubscribe()
        self._sub = self._info_sub = None
        for sub in list(self.subscribers):
            self._end(sub)

    def subscribe(self, *, run: str | None = None, workflow: str | None = None, progress: bool = False) -> Subscriber:
        """A new stream's subscriber. `progress=True` (with `run`) also signals that run's progress."""
        if progress and not run:
            raise ValueError("progress is per run: subscribe(run=..., progress=True)")
        sub = Subscriber(
            run=run or None, workflow=workflow or None, queue=asyncio.Queue(self.queue_size), progress=progress
        )
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def rates(self, seconds: int = 300, bucket: int = 5, now: float | None = None) -> list[float]:
        """Step records per second, averaged over `bucket`-second slots, for the last `seconds`, oldest first."""
        end = int(now if now is not None else time.time())
        counts = {sec: n for sec, n in self._per_second}
        slots = max(1, seconds // bucket)
        start = end - slots * bucket
        return [sum(counts.get(start + i * bucket + j, 0) for j in range(1, bucket + 1)) / bucket for i in range(slots)]

    async def _on_msg(self, msg: Msg) -> None:
        try:
            body = msgpack.unpackb(msg.data, raw=False)
            event: dict[str, Any] = {
                "run": str(body["run"]),
                "seq": int(body["seq"]),
                "status": str(body["status"]),
                "transitions": list(body.get("transitions") or []),
            }
        except Exception as exc:  # a malformed record must not stop the stream for everybody
            log.warning("dropping a malformed step record on %s: %s", msg.subject, exc)
            return
        self._count()
        self.received += 1
        self.last_id = f"{event['run']}:{event['seq']}"
        if self._progress:
            self._settle_progress(event)
        if not self.subscribers:
            return
        event["workflow"] = await self._workflow_of(event["run"])
        self.publish(event)

    def publish(self, event: dict[str, Any]) -> None:
        """Hand `event` to every matching subscriber without waiting; a full queue drops that subscriber."""
        for sub in list(self.subscribers):
            if not sub.wants(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1
                log.info("dropping a slow SSE client (%d events queued)", sub.queue.qsize())
                self._end(sub)

    def progress_of(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The latest progress of each task of the run that reported some in its current attempt, by task:
        `{"attempt", "done", "total", "message", "ts", "worker"}` (done, total and message may be None)."""
        return {task: p for task, p in self._progress.get(run_id, {}).items() if not p["ended"]}

    async def _on_info(self, msg: Msg) -> None:
        try:
            body = msgpack.unpackb(msg.data, raw=False)
            if body.get("k") != PROGRESS_KIND:
                return  # audit and checkpoint events are for the audit log, not the pages
            run, task, attempt = str(body["run"]), str(body["task"]), int(body["attempt"])
            data = body.get("data") or {}
            entry = {
                "attempt": attempt,
                "done": _number(data.get("done")),
                "total": _number(data.get("total")),
                "message": _message(data.get("message")),
                "ts": float(body.get("ts") or time.time()),
                "worker": str(body.get("worker") or ""),
                "ended": False,
            }
        except Exception as exc:  # a worker in another language may get it wrong; the others must not suffer
            log.warning("dropping a malformed progress event on %s: %s", msg.subject, exc)
            return
        tasks = self._progress.get(run)
        if tasks is None:
            tasks = self._progress[run] = {}
            if len(self._progress) > _PROGRESS_RUNS:
                self._progress.popitem(last=False)
        else:
            self._progress.move_to_end(run)
        known = tasks.get(task)
        if known is not None and (attempt < known["attempt"] or (known["ended"] and attempt == known["attempt"])):
            return  # late news of an attempt that is already over
        if known is None and len(tasks) >= _PROGRESS_TASKS:
            return  # more task names than a run can have: a confused sender, not a reason to grow
        tasks[task] = entry
        for sub in list(self.subscribers):
            if sub.progress and sub.run == run:
                self._signal_progress(sub, task)

    def _signal_progress(self, sub: Subscriber, task: str) -> None:
        first = not sub.moved
        sub.moved.add(task)
        if not first:
            return  # a marker is already queued: it will pick this task up too
        try:
            sub.queue.put_nowait({"kind": "progress", "run": sub.run})
        except asyncio.QueueFull:
            self.dropped += 1
            log.info("dropping a slow SSE client (%d events queued)", sub.queue.qsize())
            self._end(sub)

    def _settle_progress(self, event: dict[str, Any]) -> None:
        """A task that left `running` (or started another attempt) has no current progress any more. Its entry
        stays, marked ended, so that a progress event of that attempt arriving after the step is not shown."""
        tasks = self._progress.get(event["run"])
        if not tasks:
            return
        for t in event["transitions"]:
            known = tasks.get(str(t.get("task") or ""))
            if known is None or known["ended"]:
                continue
            attempt = int(t.get("attempt") or 0)
            if t.get("status") == "running" and attempt == known["attempt"]:
                continue  # progress often comes before the step that says the attempt started
            if attempt >= known["attempt"]:
                known["ended"] = True

    def _end(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.dropped = True
        while not sub.queue.empty():  # free its backlog now; the stream only needs the end marker
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def _count(self) -> None:
        sec = int(time.time())
        if self._per_second and self._per_second[-1][0] == sec:
            self._per_second[-1][1] += 1
        else:
            self._per_second.append([sec, 1])

    async def caught_up(self, events: list[dict[str, Any]], timeout: float = 1.0) -> None:
        """Wait (up to `timeout`) until the snapshots in `jd_runs` include these step records.

        The engine publishes a step record before it saves the snapshot (persist before ack), so a page
        re-rendered the moment a record arrives could read the state before that step, and show a task
        queued that is already done, until the next step (there may be none: the last step of a run)."""
        wanted: dict[str, int] = {}
        for event in events:
            wanted[event["run"]] = max(wanted.get(event["run"], 0), event["seq"])
        deadline = time.monotonic() + timeout
        for run_id, seq in list(wanted.items())[-8:]:  # a burst over many runs: the newest few are what is seen
            while time.monotonic() < deadline:
                try:
                    snapshot, _ = await self.client.runs.load(run_id)
                except Exception:
                    break
                if snapshot is None or snapshot.get("seq", 0) >= seq:
                    break
                await asyncio.sleep(0.02)

    async def _workflow_of(self, run_id: str) -> str:
        if run_id in self._workflows:
            self._workflows.move_to_end(run_id)
            return self._workflows[run_id]
        workflow = ""
        with contextlib.suppress(Exception):  # a run without a snapshot yet: unnamed, and asked again next step
            snapshot, _ = await self.client.runs.load(run_id)
            if snapshot is not None:
                workflow = str(snapshot["workflow"])
        if workflow:
            self._workflows[run_id] = workflow
            if len(self._workflows) > _WORKFLOW_CACHE:
                self._workflows.popitem(last=False)
        return workflow


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _message(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


Render = Callable[[], Awaitable[str | None]]
ProgressRender = Callable[[dict[str, dict[str, Any] | None]], Awaitable[str | None]]
"""Renders the progress of the tasks that moved (task -> its latest progress, None for none any more)."""
PROGRESS_SECONDS = 0.25  # at most this often a page gets a progress event: a bar need not move faster


async def fragment_stream(
    hub: Hub,
    render: Render,
    *,
    event: str,
    run: str | None = None,
    workflow: str | None = None,
    min_interval: float = 0.0,
    progress: ProgressRender | None = None,
    progress_event: str = "progress",
) -> AsyncIterator[ServerSentEventMessage]:
    """SSE messages of a page: the fragment `render()` makes, first at once (the current state, which also
    covers a reconnect, since history is not replayed), then again after matching step records: a burst
    is rendered once, and at most once per `min_interval` seconds. `render` returning None sends nothing.

    With `progress` (and `run`), progress of the run's tasks between steps goes out as `progress_event`
    messages made by `progress(...)`, at most every PROGRESS_SECONDS; a step's full render carries the
    latest progress itself (`render` reads `hub.progress_of`)."""
    sub = hub.subscribe(run=run, workflow=workflow, progress=progress is not None)
    try:
        html = await render()
        if html is not None:
            yield ServerSentEventMessage(data=html, event=event, id=hub.last_id or None)
        last = last_progress = time.monotonic()
        while True:
            try:
                item = await sub.next(PING_SECONDS)
            except TimeoutError:
                yield ServerSentEventMessage(comment="ping")
                continue
            if item is None:
                return
            is_step = "seq" in item
            # Throttle: list pages need not redraw on every step of every run, nor a bar on every report.
            since = time.monotonic() - (last if is_step else last_progress)
            wait = (min_interval if is_step else PROGRESS_SECONDS) - since
            if wait > 0:
                await asyncio.sleep(wait)
            steps = [i for i in [item, *sub.drain()] if "seq" in i]  # the rest are progress markers
            # Taken before rendering: progress that arrives during the render queues a marker of its own.
            moved = sub.take_progress()
            if steps:
                await hub.caught_up(steps)
                html = await render()
                last = time.monotonic()
                if html is not None:
                    yield ServerSentEventMessage(data=html, event=event, id=f"{steps[-1]['run']}:{steps[-1]['seq']}")
            elif moved and progress is not None and run is not None:
                latest = hub.progress_of(run)
                html = await progress({task: latest.get(task) for task in sorted(moved)})
                last_progress = time.monotonic()
                if html is not None:
                    yield ServerSentEventMessage(data=html, event=progress_event)
    finally:
        hub.unsubscribe(sub)
