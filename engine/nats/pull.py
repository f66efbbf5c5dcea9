"""Pull consumers the way jetdag needs them.

`Puller` keeps a pull request outstanding and re-pulls at half, so a chain of tasks never waits
for a batch to fill (nats-py's `fetch(n)` waits for n messages or its timeout). Its requests ask
for idle heartbeats: a request lost on the way (a consumer leader that moved, a reconnect) is
noticed after a few silent seconds and made again, instead of after it would have expired. `Fetcher` takes
whatever is there right now (no_wait), for a worker serving priorities highest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)

_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"


def _next_subject(stream: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


class Puller:
    """Streams messages of a durable pull consumer into `on_msg`; call `done()` once per message handled.

    At most `batch` messages are requested or in hand at once: that is the back-pressure.
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        on_msg: Callable[[Msg], None],
        *,
        batch: int = 256,
        expires: float = 10.0,
        heartbeat: float = 1.0,
    ) -> None:
        self.nc, self.on_msg, self.batch, self.expires, self.heartbeat = nc, on_msg, batch, expires, heartbeat
        self._subject = _next_subject(stream, consumer)
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._outstanding = 0
        self._in_hand = 0
        self._heard = time.monotonic()  # the last message, status or heartbeat (or our last request)
        self._watchdog: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        self._watchdog = asyncio.create_task(self._watch(), name=f"watchdog {self._subject}")
        await self._pull()

    async def stop(self) -> None:
        if self._watchdog:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._sub:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def done(self, n: int = 1) -> None:
        """`n` messages were acked, naked or terminated: room for more."""
        self._in_hand -= n
        if self._outstanding + self._in_hand <= self.batch // 2 and self._sub is not None:
            task = asyncio.ensure_future(self._pull())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pull(self) -> None:
        want = self.batch - self._outstanding - self._in_hand
        if want <= 0 or self._sub is None:
            return
        self._outstanding += want
        self._heard = time.monotonic()
        request = {"batch": want, "expires": int(self.expires * 1e9), "idle_heartbeat": int(self.heartbeat * 1e9)}
        try:
            await self.nc.publish(self._subject, orjson.dumps(request), reply=self._inbox)
        except Exception as exc:  # reconnecting: the watchdog pulls again
            self._outstanding -= want
            log.debug("pull request on %s failed: %s", self._subject, exc)

    async def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is None:
            self._outstanding = max(0, self._outstanding - 1)
            self._in_hand += 1
            self.on_msg(msg)
        elif status in ("408", "409"):
            # The request expired or was cut short; what it still owed is in the header.
            owed = int(msg.headers.get(_PENDING, "0") or 0) if msg.headers else 0
            self._outstanding = max(0, self._outstanding - owed) if owed else 0
            await self._pull()
        elif status == "404":
            self._outstanding = 0
            await self._pull()
        # "100" is an idle heartbeat: a request of ours is still waiting at the server.

    async def _watch(self) -> None:
        # A waiting request is heard from every `heartbeat`; silence for three means none is waiting.
        while True:
            await asyncio.sleep(self.heartbeat)
            silent = time.monotonic() - self._heard
            if silent > 3 * self.heartbeat and self._in_hand < self.batch:
                log.info("no answer to the pull on %s for %.1fs: pulling again", self._subject, silent)
                self._outstanding = 0
                await self._pull()


class Fetcher:
    """Takes up to n messages that are available now from a durable pull consumer."""

    def __init__(self, nc: NATS, stream: str, consumer: str) -> None:
        self.nc = nc
        self._subject = _next_subject(stream, consumer)
        self._inbox = nc.new_inbox()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async def put(msg: Msg) -> None:
            self._queue.put_nowait(msg)

        self._sub = await self.nc.subscribe(self._inbox, cb=put)

    async def stop(self) -> None:
        if self._sub:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def fetch(self, n: int, linger: float = 0.0, wait: float = 2.0) -> list[Msg]:
        """Up to `n` messages available now; with `linger`, wait that long for the first one to arrive.

        The server answers as soon as it has delivered what it has (no_wait), and with `expires` it
        holds an empty answer back until the first message lands: no waiting for a full batch.
        """
        async with self._lock:
            out: list[Msg] = []
            # Messages of an earlier request that answered late are ours to handle first.
            while not self._queue.empty() and len(out) < n:
                msg = self._queue.get_nowait()
                if not (msg.headers and _STATUS in msg.headers):
                    out.append(msg)
            if len(out) >= n:
                return out
            request: dict[str, object] = {"batch": n - len(out), "no_wait": True}
            if linger > 0:
                request["expires"] = int(linger * 1e9)
            await self.nc.publish(self._subject, orjson.dumps(request), reply=self._inbox)
            deadline = time.monotonic() + linger + wait
            while len(out) < n:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        msg = await self._queue.get()
                except TimeoutError:
                    break
                if msg.headers and _STATUS in msg.headers:
                    if msg.headers[_STATUS] != "100":
                        break
                    continue
                out.append(msg)
            return out
