"""The live hub: one core-NATS subscription to every step record, fanned out to the SSE clients of this process.

Each browser (or API client) gets a bounded queue. The hub never waits for a client: a client whose
queue is full is dropped (its stream ends and the browser's EventSource reconnects, receiving the
current state first), so one slow or stalled reader costs at most its queue, never the process's
memory or the other clients' latency. Step records are not replayed on reconnect (core NATS keeps
no history here); the pages re-render the current state instead, which is all a dashboard needs.
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
QUEUE_SIZE = 256
HISTORY_SECONDS = 600  # how far back the overview's step-rate sparkline can look
PING_SECONDS = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
_WORKFLOW_CACHE = 10_000  # run id -> workflow, so a workflow filter costs one KV read per run, not per step


@dataclass(eq=False)
class Subscriber:
    """One connected stream: its filters and its bounded queue (None in the queue ends the stream)."""

    run: str | None = None
    workflow: str | None = None
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: bool = False

    def wants(self, event: dict[str, Any]) -> bool:
        if self.run is not None and event["run"] != self.run:
            return False
        return self.workflow is None or event.get("workflow") == self.workflow

    async def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event; None when the stream must end. TimeoutError when nothing came within `timeout`."""
        return await asyncio.wait_for(self.queue.get(), timeout)

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
        self._sub: NatsSubscription | None = None

    @property
    def clients(self) -> int:
        """Connected SSE clients (for /metrics)."""
        return len(self.subscribers)

    async def start(self) -> None:
        self._sub = await self.client.nc.subscribe(STEP_SUBJECT, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for sub in list(self.subscribers):
            self._end(sub)

    def subscribe(self, *, run: str | None = None, workflow: str | None = None) -> Subscriber:
        sub = Subscriber(run=run or None, workflow=workflow or None, queue=asyncio.Queue(self.queue_size))
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


Render = Callable[[], Awaitable[str | None]]


async def fragment_stream(
    hub: Hub,
    render: Render,
    *,
    event: str,
    run: str | None = None,
    workflow: str | None = None,
    min_interval: float = 0.0,
) -> AsyncIterator[ServerSentEventMessage]:
    """SSE messages of a page: the fragment `render()` makes, first at once (the current state, which also
    covers a reconnect, since history is not replayed), then again after matching step records: a burst
    is rendered once, and at most once per `min_interval` seconds. `render` returning None sends nothing."""
    sub = hub.subscribe(run=run, workflow=workflow)
    try:
        html = await render()
        if html is not None:
            yield ServerSentEventMessage(data=html, event=event, id=hub.last_id or None)
        last = time.monotonic()
        while True:
            try:
                item = await sub.next(PING_SECONDS)
            except TimeoutError:
                yield ServerSentEventMessage(comment="ping")
                continue
            if item is None:
                return
            wait = min_interval - (time.monotonic() - last)
            if wait > 0:
                await asyncio.sleep(wait)  # throttle: list pages need not redraw on every step of every run
            items = [item, *sub.drain()]
            await hub.caught_up(items)
            item = items[-1]
            html = await render()
            last = time.monotonic()
            if html is not None:
                yield ServerSentEventMessage(data=html, event=event, id=f"{item['run']}:{item['seq']}")
    finally:
        hub.unsubscribe(sub)
