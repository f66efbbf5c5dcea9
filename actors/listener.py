"""Listener: every message published on a workflow's `on_message` subject starts one run of it.

The message's body (a JSON or msgpack map; empty is `{}`) is the run's params and its headers are the run's
metadata (`{meta:header}`); its time, plus the trigger's offset, is the logical time. Messages wait in a
stream (engine/nats/capture.py) and every engine pulls from the workflow's one durable consumer, so each
message is taken by one engine, and the run's id, derived from the stream sequence, makes a redelivery
start the same run. A body that is not a map is dead-lettered to `jd.dlq._invalid` with the reason, as the
inbox does. While the workflow's schedule is off, its messages are acknowledged and start nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from jetdag.engine import subjects as S
from jetdag.engine.errors import JetdagError, MessageRejected
from jetdag.engine.events import RunSubmitted
from jetdag.engine.firing import Firing, submissions
from jetdag.engine.messages import unpack_map
from jetdag.engine.nats.capture import capture, release
from jetdag.engine.nats.pull import Puller

from .catalog import Catalog
from .context import EngineContext
from .rejects import reject
from .scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Listening:
    subject: str
    puller: Puller


class Listener:
    def __init__(self, ctx: EngineContext, catalog: Catalog, scheduler: Scheduler, replicas: int = 1) -> None:
        self.ctx, self.catalog, self.scheduler, self.replicas = ctx, catalog, scheduler, replicas
        self.listening: dict[str, _Listening] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        changes = self.catalog.subscribe()
        try:
            await self.catalog.ready.wait()
            for workflow in list(self.catalog.specs):
                await self._reconcile(workflow)
            while True:
                await self._reconcile(await changes.get())
        finally:
            self.catalog.unsubscribe(changes)
            for listening in self.listening.values():
                await listening.puller.stop()
            self.listening.clear()

    def _subject(self, workflow: str) -> str | None:
        found = self.catalog.specs.get(workflow)
        return next((t.subject for t in found[0].triggers if t.subject), None) if found else None

    async def _reconcile(self, workflow: str) -> None:
        """Listen on the workflow's subject as its newest version says (or stop listening)."""
        subject, current = self._subject(workflow), self.listening.get(workflow)
        if current is not None and current.subject == subject:
            return
        if current is not None:
            await current.puller.stop()
            del self.listening[workflow]
        try:
            if subject is None:
                if current is not None:
                    await release(self.ctx.js, workflow)
                return
            stream = await capture(self.ctx.js, workflow, subject, self.replicas)
        except JetdagError as exc:
            log.error("workflow %s: %s", workflow, exc)
            return
        consumer = S.message_consumer(workflow)
        puller = Puller(self.ctx.nc, stream, consumer, lambda msg: self._spawn(self._handle(workflow, msg)), batch=256)
        self.listening[workflow] = _Listening(subject, puller)
        await puller.start()

    async def _handle(self, workflow: str, msg: Msg) -> None:
        try:
            runs = self.submission(workflow, msg)
            if runs:
                await self.scheduler.publish(runs)
                self.ctx.counters.messages += len(runs)
            await msg.ack()
        except MessageRejected as err:
            self.ctx.counters.rejected += 1
            await reject(self.ctx.js, msg, err)
        except Exception as exc:  # NATS trouble: try again shortly
            log.warning("message on %s for workflow %s not taken yet: %s", msg.subject, workflow, exc)
            await msg.nak(1.0)
        finally:
            listening = self.listening.get(workflow)
            if listening is not None:
                listening.puller.done()

    def submission(self, workflow: str, msg: Msg) -> list[RunSubmitted]:
        """The run a message starts (none while the schedule is off); MessageRejected says what is wrong with it."""
        params = unpack_map(msg.subject, msg.data) if msg.data else {}
        found = self.catalog.specs.get(workflow)
        state, _ = self.catalog.state(workflow)
        if found is None or not state.enabled:
            why = "its schedule is off" if found else "it no longer listens"
            log.info(
                "message %s on %s starts no run of %s: %s", msg.metadata.sequence.stream, msg.subject, workflow, why
            )
            return []
        spec, version = found
        trigger = next(t for t in spec.triggers if t.subject)
        meta = msg.metadata
        moment = meta.timestamp.timestamp() if meta.timestamp else time.time()
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        firing = Firing(
            trigger, trigger.key("message"), moment, moment, identity=(meta.stream, meta.sequence.stream),
            meta={"subject": msg.subject, **headers}, params=params,
        )  # fmt: skip
        return submissions(spec, version, firing, time.time())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
