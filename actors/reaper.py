"""Reaper: presumes a worker dead when its heartbeats stop, and fails the attempts it was running.

Without it a task of a worker killed with -9 waits for its message's AckWait (30 s) to pass before
JetStream hands it to another worker. The reaper watches `jd_workers`; once a worker has missed
DEAD_AFTER_BEATS of its own beats, it publishes to each running attempt's run a retryable
`task.failed` ("worker … presumed dead"), with dedupe id `<run>:<task>:<attempt>:reaped`, then
deletes the worker's entry. The run's retry policy dispatches the next attempt as for any failure.

Every engine runs one and any of them may reap a worker: a second reap of the same attempt is
dropped by JetStream's duplicate window, and past it `decide` ignores a failure of an attempt that
is no longer current. A late real result of the reaped attempt (the worker was only frozen) has a
different dedupe id, so JD_EVENTS records it; `decide` keeps whichever of the two came first.
The reaped attempt's task message is still pending in JD_TASKS: when AckWait redelivers it, the
worker that gets it sees in the run's snapshot that a newer attempt exists and acks it unrun.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.events import TaskFailed
from jetdag.engine.messages import MSG_ID, encode_event, msg_id
from jetdag.engine.nats.publisher import Publisher, acked
from jetdag.engine.workers import RunningTask, dead_after, running_tasks

log = logging.getLogger(__name__)

MAX_SCAN_EVERY = 1.0
"""Seconds between looks at the workers' ages, at most (less when a worker beats faster)."""
MIN_SCAN_EVERY = 0.05

_KV_OP = "KV-Operation"


@dataclass(slots=True)
class _Seen:
    info: dict[str, Any]
    revision: int
    at: float
    """When this reaper received the beat, on its own monotonic clock (never the worker's wall clock)."""


class Reaper:
    """Watches `jd_workers`; `reaped` counts the workers presumed dead by this reaper."""

    def __init__(
        self, nc: NATS, js: JetStreamContext, engine_id: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.nc, self.js, self.engine_id, self.clock = nc, js, engine_id, clock
        self.publisher = Publisher(nc)
        # Every worker's last beat as this reaper received it. The bucket's TTL (Topology.worker_ttl)
        # removes a dead worker's entry without a trace in the watch (no delete marker is written),
        # and it may do so before the worker is presumed dead (an engine that starts late sees the
        # entry with little TTL left): so what decides is this map, kept from the watch, and an
        # entry leaves it only when the worker deletes its key (a clean stop), another reaper
        # deleted it, or this reaper reaped it.
        self.seen: dict[str, _Seen] = {}
        self.reaped = 0
        self._outage = False

    async def run(self) -> None:
        kv = await self.js.key_value(S.WORKERS_KV)
        watcher = await kv.watchall()
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=self._scan_every())
                except NatsTimeout:
                    entry = None
                if entry is not None:
                    self._note(entry.key, entry.value, entry.revision or 0, entry.operation)
                await self.scan(kv)
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await watcher.stop()

    def _scan_every(self) -> float:
        shortest = min((dead_after(s.info) for s in self.seen.values()), default=MAX_SCAN_EVERY * 6)
        return min(MAX_SCAN_EVERY, max(MIN_SCAN_EVERY, shortest / 6))

    def _note(self, key: str, value: bytes | None, revision: int, operation: str | None) -> None:
        if operation == "DEL":
            self.seen.pop(key, None)  # stopped cleanly, or reaped by another engine
            return
        if operation is not None or not value:
            return  # a purge or an expiry marker: the worker is not known to be alive; keep judging it
        try:
            info = msgpack.unpackb(value, raw=False)
        except Exception:
            log.debug("jd_workers/%s: not a heartbeat", key)
            return
        if isinstance(info, dict):
            self.seen[key] = _Seen(info, revision, self.clock())

    async def scan(self, kv: KeyValue) -> None:
        """Reap every worker silent for longer than its threshold (after checking the store agrees)."""
        if not self.nc.is_connected:
            self._outage = True
            return
        now = self.clock()
        if self._outage:
            # While this engine was cut off, or JetStream did not answer, workers could not be heard
            # (or could not beat at all, when the server itself was down): each gets a full threshold
            # from now, instead of all being presumed dead the moment NATS is back.
            for seen in self.seen.values():
                seen.at = now
            self._outage = False
            return
        for worker_id, seen in list(self.seen.items()):
            if now - seen.at > dead_after(seen.info) and self.seen.get(worker_id) is seen:
                try:
                    await self._confirm_and_reap(kv, worker_id, seen)
                except Exception as exc:
                    log.warning("reaping worker %s: %s (trying again after a full threshold)", worker_id, exc)
                    self._outage = True
                    return

    async def _confirm_and_reap(self, kv: KeyValue, worker_id: str, seen: _Seen) -> None:
        # The watch may be behind (this engine was cut off from NATS for a while): the stored entry
        # decides. Unchanged or expired: dead. Deleted: gone cleanly. Newer: alive after all.
        stream, subject = f"KV_{S.WORKERS_KV}", f"$KV.{S.WORKERS_KV}.{worker_id}"
        try:
            last = await self.js.get_msg(stream, subject=subject)
        except NotFoundError:
            last = None
        if last is not None and last.seq != seen.revision:
            self._note(worker_id, last.data, last.seq or 0, (last.headers or {}).get(_KV_OP))
            if self.seen.get(worker_id) is not seen:
                return  # a newer beat, or deleted
        await self.reap(worker_id, seen.info, self.clock() - seen.at)
        self.seen.pop(worker_id, None)
        with contextlib.suppress(Exception):
            # Only this beat's revision: a worker that was frozen and beats again stays listed.
            await kv.delete(worker_id, last=seen.revision if last is not None else None)

    async def reap(self, worker_id: str, info: dict[str, Any], silent_for: float) -> int:
        """Publish a retryable failure of every attempt `info` lists as running; how many there were."""
        host = info.get("host") or "an unknown host"
        error = f"worker {worker_id} on {host} presumed dead (no heartbeat for {silent_for:.1f}s)"
        tasks = await fail_running(self.publisher, worker_id, info, error, reaped_by=self.engine_id)
        self.reaped += 1
        if tasks:
            names = ", ".join(f"{t.run}/{t.task}#{t.attempt}" for t in tasks)
            log.warning("%s: failed %d attempt(s) for retry: %s", error, len(tasks), names)
        else:
            log.info("%s: it was running nothing", error)
        return len(tasks)


async def fail_running(
    publisher: Publisher, worker_id: str, info: dict[str, Any], error: str, **details: Any
) -> list[RunningTask]:
    """Publish a retryable `task.failed` of every attempt the heartbeat `info` lists as running, and wait for
    JetStream to store them. The dedupe id is the same whoever fails an attempt (two reapers, or a reaper and
    the worker that replaced the dead one), so each attempt is failed once."""
    tasks = running_tasks(info)
    futures = []
    for t in tasks:
        event = TaskFailed(
            t.run, t.task, t.attempt, time.time(), error, worker_id, retryable=True,
            details={**details, "last_beat": info.get("beat"), "host": info.get("host")},
        )  # fmt: skip
        headers = {MSG_ID: msg_id(t.run, t.task, t.attempt, "reaped")}
        futures.append(await publisher.publish(t.reply, encode_event(event), headers))
    await acked(futures)
    return tasks
