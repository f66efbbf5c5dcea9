"""PartitionOwner: consumes `jd.evt.<p>.*` through one durable consumer and routes events to run actors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nats.aio.msg import Msg
from nats.js import api as js_api

from jetdag.engine import subjects as S
from jetdag.engine.errors import MessageRejected
from jetdag.engine.messages import decode_event
from jetdag.engine.nats.pull import Puller
from jetdag.engine.nats.rewind import rewind_unacked

from .context import EngineContext
from .rejects import reject
from .run import RunActor
from .supervisor import Supervisor

log = logging.getLogger(__name__)

ACK_WAIT = 6.0
"""Events an engine held when it died come back after this long, unless the partition's next owner
rewinds the consumer (engine/nats/rewind.py; it does when that is cheap): keep it at the lease TTL, so a takeover
waits for nothing else, and well below the time a run gives an event ahead of its cause
(run.MAX_EARLY_DELIVERIES x EARLY_RETRY = 25 s) before dropping it: after a kill -9 the cause is among
those held events, and a 30 s wait here had results dropped and their runs stuck for good."""
MAX_ACK_PENDING = 50_000  # deferred events (retry timers) wait here as unacked messages


def partition_consumer_config(partition: int) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        durable_name=S.partition_consumer(partition),
        filter_subject=S.partition_filter(partition),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_wait=ACK_WAIT,
        max_deliver=-1,
        max_ack_pending=MAX_ACK_PENDING,
    )


class PartitionOwner:
    """Owns partition `p` while its lease is held: one actor per live run, supervised one-for-one."""

    def __init__(self, ctx: EngineContext, partition: int, batch: int = 512) -> None:
        self.ctx, self.partition, self.batch = ctx, partition, batch
        self.actors: dict[str, RunActor] = {}
        self.supervisor = Supervisor(f"partition-{partition}")
        self._puller: Puller | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Consume until cancelled; cancelling stops the consumer and every run actor of the partition."""
        self.supervisor = Supervisor(f"partition-{self.partition}")  # fresh after a restart
        info = await self.ctx.js.add_consumer(S.EVENTS, config=partition_consumer_config(self.partition))
        # Events a previous owner (a killed engine, this one before a restart) took and never acked:
        # back now instead of after AckWait. We hold the lease, so no one else should be reading them (a
        # zombie owner still could: its writes are fenced by the snapshot's compare-and-set, as ever).
        await rewind_unacked(self.ctx.js, S.EVENTS, info)
        self._puller = Puller(
            self.ctx.nc, S.EVENTS, S.partition_consumer(self.partition), self._route, batch=self.batch
        )
        await self._puller.start()
        try:
            while True:
                await asyncio.sleep(self.ctx.idle_timeout / 2)
                self._passivate_idle()
        finally:
            await self._puller.stop()
            await self.supervisor.stop()
            self.actors.clear()

    def _passivate_idle(self) -> None:
        """Tell each actor idle for `idle_timeout` to stop: its run lives on in KV until its next event."""
        now = asyncio.get_running_loop().time()
        for actor in self.actors.values():
            if not actor.stopped and actor.mailbox.empty() and now - actor.idle_since >= self.ctx.idle_timeout:
                actor.idle()

    def _route(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.subject, msg.data)
        except MessageRejected as err:
            self.ctx.counters.rejected += 1
            self._spawn(self._reject(msg, err))
            return
        actor = self.actors.get(event.run_id)
        if actor is None or actor.stopped:
            actor = RunActor(self.ctx, self.partition, event.run_id, self._done)
            if not self.supervisor.start(event.run_id, self._actor_body(actor)):
                self._spawn(self._hand_back(msg))  # the partition is closing: redeliver to the next owner
                return
            self.actors[event.run_id] = actor
        actor.tell(event, msg)

    async def _hand_back(self, msg: Msg) -> None:
        try:
            await msg.nak()
        finally:
            self._done(1)

    def _actor_body(self, actor: RunActor) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            try:
                await actor.run()
            finally:
                # A passivated actor leaves the registry in the same step in which it stopped.
                if actor.stopped and self.actors.get(actor.run_id) is actor:
                    del self.actors[actor.run_id]
                    # And from the supervisor's restart stats, else every run ever seen stays there for good.
                    self.supervisor.stats.pop(actor.run_id, None)

        return body

    async def _reject(self, msg: Msg, err: MessageRejected) -> None:
        try:
            await reject(self.ctx.js, msg, err)
        finally:
            self._done(1)

    def _done(self, n: int) -> None:
        if self._puller is not None:
            self._puller.done(n)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
