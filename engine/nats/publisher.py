"""JetStream publishes with their acknowledgements, for the hot paths of the engine.

nats-py's `publish_async` does the same and more per message: a semaphore, a random token, a done
callback and a PubAck dataclass parsed from JSON. The engine publishes three to four times per task
(the task, step records, snapshot writes), so this keeps only what it needs: one reply subscription,
a counter for the token, and the stream sequence out of the ack (a KV write's new revision).
"""

from __future__ import annotations

import asyncio
from typing import Final

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from jetdag.engine.errors import JetdagError

WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's error code for a write whose expected last sequence (a KV revision) is not the stored one."""


class PublishRefused(JetdagError):
    """JetStream did not store a message: no stream takes the subject, or the stream refused it."""

    def __init__(self, subject: str, description: str, code: int = 0) -> None:
        super().__init__(f"publish to {subject}: {description}")
        self.subject, self.code = subject, code


class Publisher:
    """`await publish(...)` sends a message and returns a future of its stream sequence number."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._cut = 0
        self._pending: dict[str, tuple[asyncio.Future[int], str]] = {}
        self._next = 0
        self._sub: Subscription | None = None

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for future, _ in self._pending.values():
            future.cancel()
        self._pending.clear()

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> asyncio.Future[int]:
        """Send; the future is the stream sequence once stored, or PublishRefused.

        The future never fails by itself when the server dies with the message: wait for it with a
        timeout (`setup.acked`), which cancels it.
        """
        if self._sub is None:  # on first use: a role that never publishes holds no subscription
            self._prefix = f"{self.nc.new_inbox()}."
            self._cut = len(self._prefix)
            self._sub = await self.nc.subscribe(f"{self._prefix}*", cb=self._on_ack)
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[token] = (future, subject)
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self._pending[token]
            raise
        if len(self._pending) > 100_000:
            self._forget_cancelled()
        return future

    async def _on_ack(self, msg: Msg) -> None:
        pending = self._pending.pop(msg.subject[self._cut :], None)
        if pending is None:
            return
        future, subject = pending
        if future.done():
            return
        if not msg.data:  # a status message: 503, no stream listens on the subject
            future.set_exception(PublishRefused(subject, "no JetStream stream takes this subject"))
            return
        ack = orjson.loads(msg.data)
        if "error" in ack:
            error = ack["error"]
            future.set_exception(PublishRefused(subject, error.get("description", "refused"), error.get("err_code", 0)))
        else:
            future.set_result(ack["seq"])

    def _forget_cancelled(self) -> None:
        """Acks lost with a dead server leave their (cancelled) futures behind; drop them now and then."""
        self._pending = {t: p for t, p in self._pending.items() if not p[0].done()}
