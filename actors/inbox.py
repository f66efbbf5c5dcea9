"""Inbox: turns messages published to `jd.submit.<workflow>` and `jd.enqueue.<queue>.<handler>` into runs.

They wait in the JD_INBOX stream while no engine runs. Each becomes a `run.submitted` event whose
dedupe id is the run id, so a redelivered or republished submission starts one run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Coroutine
from typing import Any

import msgpack
import orjson
from nats.aio.msg import Msg
from nats.js import api as js_api

from jetdag.engine import subjects as S
from jetdag.engine.client import DELAY_HEADER, META_HEADER, PRIORITY_HEADER, RUN_ID_HEADER, TIME_HEADER
from jetdag.engine.durations import parse_duration
from jetdag.engine.errors import MessageRejected, NotFound
from jetdag.engine.events import RunSubmitted
from jetdag.engine.ids import derived_run_id
from jetdag.engine.messages import MSG_ID, encode_event, unpack_map
from jetdag.engine.model import one_task_spec
from jetdag.engine.nats.publisher import acked
from jetdag.engine.nats.pull import Puller

from .context import EngineContext
from .rejects import reject

log = logging.getLogger(__name__)


class Inbox:
    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._puller: Puller | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        config = js_api.ConsumerConfig(
            durable_name=S.INBOX_CONSUMER,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=-1,
            max_ack_pending=10_000,
        )
        await self.ctx.js.add_consumer(S.INBOX, config=config)
        self._puller = Puller(self.ctx.nc, S.INBOX, S.INBOX_CONSUMER, self._on_msg, batch=256)
        await self._puller.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self._puller.stop()

    def _on_msg(self, msg: Msg) -> None:
        self._spawn(self._handle(msg))

    async def _handle(self, msg: Msg) -> None:
        try:
            event = await self.submission(msg)
            subject = S.event_subject(S.partition_of(event.run_id, self.ctx.partitions), event.run_id)
            headers = {MSG_ID: S.submission_id(event.run_id)}
            await acked([await self.ctx.publisher.publish(subject, encode_event(event), headers)])
            await msg.ack()
        except MessageRejected as err:
            self.ctx.counters.rejected += 1
            await reject(self.ctx.js, msg, err)
        except Exception as exc:  # NATS trouble: try again shortly
            log.warning("submission on %s not processed yet: %s", msg.subject, exc)
            await msg.nak(1.0)
        finally:
            if self._puller:
                self._puller.done()

    async def submission(self, msg: Msg) -> RunSubmitted:
        """The run a message asks for; MessageRejected says what is wrong with it."""
        subject, headers = msg.subject, msg.headers or {}
        meta = msg.metadata
        ts = meta.timestamp.timestamp() if meta.timestamp else 0.0
        run_id = headers.get(RUN_ID_HEADER) or derived_run_id(int(ts * 1000), meta.sequence.stream)
        if not S.is_token(run_id) or len(run_id) > 64:
            raise MessageRejected(subject, f"header {RUN_ID_HEADER} {run_id!r} is not a valid run id")
        tokens = subject.split(".")
        if tokens[1] == "submit":
            if len(tokens) != 3:
                raise MessageRejected(subject, "expected jd.submit.<workflow>")
            params = unpack_map(subject, msg.data) if msg.data else {}
            workflow = tokens[2]
            try:
                _, revision = await self.ctx.defs.get(workflow)
            except NotFound:
                error = f"unknown workflow {workflow!r}: register it first with `jetdag apply FILE`"
                return RunSubmitted(run_id, workflow, 0, params, ts, error=error)
            logical_time = _logical_time(subject, headers.get(TIME_HEADER))
            run_meta = _meta(subject, headers.get(META_HEADER))
            return RunSubmitted(run_id, workflow, revision, params, ts, logical_time=logical_time, meta=run_meta)
        if len(tokens) < 4:
            raise MessageRejected(subject, "expected jd.enqueue.<queue>.<handler>")
        queue, handler = tokens[2], ".".join(tokens[3:])
        payload = _unpack_any(subject, msg.data)
        priority = _priority(subject, headers.get(PRIORITY_HEADER))
        delay = _delay(subject, headers.get(DELAY_HEADER))
        spec = one_task_spec(handler, queue, payload, priority)
        return RunSubmitted(run_id, handler, 0, {}, ts, spec=spec, not_before=ts + delay if delay else None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _unpack_any(subject: str, data: bytes) -> Any:
    if not data:
        return None
    json_error: ValueError | None = None
    if data[:1] in b'{[" \t\r\n':
        try:
            return orjson.loads(data)
        except ValueError as exc:  # msgpack of a small int is one of these bytes: enqueue(h, 9) sends b"\t"
            json_error = exc
    try:
        return msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException, msgpack.ExtraData) as exc:
        raise MessageRejected(subject, f"payload is not valid msgpack or JSON: {json_error or exc}") from exc


def _logical_time(subject: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise MessageRejected(
            subject, f"header {TIME_HEADER} must be epoch seconds or ISO 8601, got {value!r}"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def _meta(subject: str, value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        meta = orjson.loads(value)
    except ValueError as exc:
        raise MessageRejected(subject, f"header {META_HEADER} is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise MessageRejected(subject, f"header {META_HEADER} must be a JSON object, got {type(meta).__name__}")
    return meta


def _priority(subject: str, value: str | None) -> int:
    if value is None:
        return S.DEFAULT_PRIORITY
    if not value.isdigit() or int(value) not in S.PRIORITIES:
        raise MessageRejected(subject, f"header {PRIORITY_HEADER} must be 0..9 (9 first), got {value!r}")
    return int(value)


def _delay(subject: str, value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return parse_duration(float(value) if value.replace(".", "", 1).isdigit() else value)
    except ValueError as exc:
        raise MessageRejected(subject, f"header {DELAY_HEADER}: {exc}") from exc
