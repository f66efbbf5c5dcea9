"""JetStream publishes with their acknowledgements, for the hot paths of the engine and the workers.

nats-py's `publish_async` does the same and more per message: a semaphore, a random token, a done
callback and a PubAck dataclass parsed from JSON, and it never gives up on an ack. The engine publishes
three to four times per task (the task, step records, snapshot writes), so this keeps only what it
needs: one reply subscription, a counter for the token, the stream sequence out of the ack (a KV
write's new revision), and one timer for all publishes instead of a timeout per wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final, TypeVar

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from jetdag.engine.errors import JetdagError

T = TypeVar("T")

PUBLISH_TIMEOUT: Final = 5.0
"""How long to wait for JetStream to acknowledge a publish (nats-py's own default for requests)."""

WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's error code for a write whose expected last sequence (a KV revision) is not the stored one."""


class PublishRefused(JetdagError):
    """JetStream did not store a message: no stream takes the subject, or the stream refused it."""

    def __init__(self, subject: str, description: str, code: int = 0) -> None:
        super().__init__(f"publish to {subject}: {description}")
        self.subject, self.code = subject, code


class StreamUnavailable(PublishRefused, NoRespondersError):
    """No stream answered: none takes the subject, or (in a cluster) its leader is being elected. Also a
    nats-py NoRespondersError, as nats-py's own publish raises then, so callers that retry on NATS errors
    retry on this one."""

    def __str__(self) -> str:
        return PublishRefused.__str__(self)


class Publisher:
    """`await publish(...)` sends a message and returns a future of its stream sequence number."""

    def __init__(self, nc: NATS, timeout: float = PUBLISH_TIMEOUT) -> None:
        self.nc, self.timeout = nc, timeout
        self._prefix = ""
        self._cut = 0
        self._pending: dict[str, tuple[asyncio.Future[int], str, float]] = {}  # in the order sent
        self._next = 0
        self._sub: Subscription | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for future, _, _ in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> asyncio.Future[int]:
        """Send; the future is the stream sequence once stored, PublishRefused, or TimeoutError when no
        ack came within `timeout` seconds (a publish lost with a server that died): the caller publishes
        again with the same message ids."""
        if self._sub is None:  # on first use: a role that never publishes holds no subscription
            self._prefix = f"{self.nc.new_inbox()}."
            self._cut = len(self._prefix)
            self._sub = await self.nc.subscribe(f"{self._prefix}*", cb=self._on_ack)
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending[token] = (future, subject, loop.time() + self.timeout)
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self._pending[token]
            raise
        if self._timer is None:
            self._timer = loop.call_later(self.timeout / 4, self._expire)
        return future

    async def _on_ack(self, msg: Msg) -> None:
        pending = self._pending.pop(msg.subject[self._cut :], None)
        if pending is None:
            return
        future, subject, _ = pending
        if future.done():
            return
        if not msg.data:  # a status message: 503, no stream listens on the subject (now)
            future.set_exception(StreamUnavailable(subject, "no JetStream stream takes this subject (now)"))
            return
        ack = orjson.loads(msg.data)
        if "error" in ack:
            error = ack["error"]
            future.set_exception(PublishRefused(subject, error.get("description", "refused"), error.get("err_code", 0)))
        else:
            future.set_result(ack["seq"])

    def _expire(self) -> None:
        """Fail the publishes whose ack is overdue (the oldest first, as sent), and look again later."""
        now = asyncio.get_running_loop().time()
        while self._pending:
            token, (future, subject, deadline) = next(iter(self._pending.items()))
            if deadline > now:
                break
            del self._pending[token]
            if not future.done():
                future.set_exception(TimeoutError(f"publish to {subject}: no ack from JetStream in {self.timeout:g}s"))
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.timeout / 4, self._expire) if self._pending else None


async def acked(futures: Sequence[asyncio.Future[T]]) -> list[T]:
    """The results of publish futures, in order; the first failure is raised and the rest are cancelled."""
    try:
        return [await future for future in futures]  # all in flight already: no gather needed
    finally:
        for future in futures:
            future.cancel()  # a no-op when done
