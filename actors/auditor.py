"""The auditor: every message of JD_EVENTS into the DuckDB audit log, and the one door to query it.

It reads `jd.evt.>` through the durable consumer `jd_auditor` in batches bounded by size and time,
stores each batch in one transaction and acks it (AckAll: one ack per batch) only after the commit.
DuckDB lets one process open the file, so the auditor also answers queries over NATS
(`jd.audit.<verb>`, request-reply: sql, saved, prune, export, info, summary, task, tasks): the CLI
and every web process ask it.

The file is disposable. Where the stream's position and the file disagree (the file was deleted,
or is older than the consumer's position), the consumer is recreated at the file's last event + 1
and the auditor says in the log that it is rebuilding.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from jetdag.engine import subjects as S
from jetdag.engine.audit import query
from jetdag.engine.audit.saved import SavedQuery, load_saved
from jetdag.engine.audit.store import MAX_TASKS_PAGE, AuditStore, Message, decode_cursor
from jetdag.engine.audit.summary import summarize
from jetdag.engine.errors import JetdagError, NotFound
from jetdag.engine.stores.defs import DefStore

log = logging.getLogger(__name__)
T = TypeVar("T")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class Auditor:
    """One per DuckDB file. `run()` until cancelled."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        path: Path,
        *,
        batch: int = 10_000,
        linger: float = 0.2,
        retention_days: float = 90.0,
        prune_every: float = 3600.0,
        queries: Path | None = None,
        export_to: Path | None = None,
        export_every: float = 86400.0,
    ) -> None:
        self.nc, self.js, self.batch, self.linger = nc, js, batch, linger
        self.retention_days, self.prune_every = retention_days, prune_every
        self.queries_file, self.export_to, self.export_every = queries, export_to, export_every
        self.saved: dict[str, SavedQuery] = {}
        self.store = AuditStore(path)
        self.defs: DefStore
        self.ready = asyncio.Event()
        self.ingested = 0
        self._write = asyncio.Lock()
        """Held by each batch, prune and export: one writer, one thing at a time."""
        self._requests: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(4)
        """Users' queries at once; DuckDB's threads and memory are capped for all of them together."""
        self._queries = 0
        self._idle = asyncio.Event()
        """Set while no query runs: export waits for it."""
        self._idle.set()
        self._open = asyncio.Event()
        """Clear while export has the file closed; queries wait for it."""

    async def run(self) -> None:
        self.saved = load_saved(self.queries_file)
        self.defs = await DefStore.open(self.js)
        await asyncio.to_thread(self.store.open)
        self._open.set()
        try:
            sub = await self._subscribe()
            services = [
                await self.nc.subscribe(S.audit_subject(verb), queue=S.AUDITOR_CONSUMER, cb=self._serve(handler))
                for verb, handler in (
                    ("sql", self._sql),
                    ("saved", self._saved),
                    ("prune", self._prune),
                    ("export", self._export),
                    ("info", self._info),
                    ("summary", self._summary),
                    ("task", self._task),
                    ("tasks", self._tasks),
                )
            ]
            self.ready.set()
            chores = [asyncio.create_task(self._prune_periodically(), name="audit retention")]
            if self.export_to is not None:
                chores.append(asyncio.create_task(self._export_periodically(self.export_to), name="audit export"))
            try:
                await self._consume(sub)
            finally:
                for chore in chores:
                    chore.cancel()
                for s in services:
                    with contextlib.suppress(Exception):
                        await s.unsubscribe()
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        finally:
            await self._writing(self.store.close)

    async def _writing(self, write: Callable[..., T], *args: Any) -> T:
        """`write(*args)` on a thread, one write at a time."""
        async with self._write:
            return await _finishing(asyncio.to_thread(write, *args))

    # --- ingest -----------------------------------------------------------------------------------

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        last = await asyncio.to_thread(self.store.last_id)
        config = js_api.ConsumerConfig(
            durable_name=S.AUDITOR_CONSUMER,
            filter_subject="jd.evt.>",
            ack_policy=js_api.AckPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=-1,
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=last + 1,
        )
        # The file, not the consumer, knows what is stored: a batch delivered to an auditor that died
        # before its commit must be read again, and AckAll would let a later ack skip it. So the
        # consumer is only a cursor, recreated at the file's last event + 1 on every start.
        try:
            info = await self.js.consumer_info(S.EVENTS, S.AUDITOR_CONSUMER)
            read_to = info.ack_floor.stream_seq if info.ack_floor else 0
            await self.js.delete_consumer(S.EVENTS, S.AUDITOR_CONSUMER)
        except NotFoundError:
            read_to = 0
        stream = await self.js.stream_info(S.EVENTS)
        if stream.state.last_seq > last and (read_to > last or self.store.rebuilt):
            log.warning(
                "audit log %s holds events up to %d: rebuilding it from %s (events %d..%d)",
                self.store.path, last, S.EVENTS, max(last + 1, stream.state.first_seq), stream.state.last_seq,
            )  # fmt: skip
        await self.js.add_consumer(S.EVENTS, config=config)
        return await self.js.pull_subscribe_bind(S.AUDITOR_CONSUMER, stream=S.EVENTS)

    async def _consume(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                msgs = await sub.fetch(self.batch, timeout=self.linger)
            except (TimeoutError, NatsTimeout):
                continue
            if not msgs:  # nats-py may end a fetch with only a status message
                continue
            batch = [_message(m) for m in msgs]
            new = await self._writing(self.store.ingest, batch)
            self.ingested += new
            # AckAll: acking the last acks the batch; only after the commit, so a crash redelivers it.
            await msgs[-1].ack()

    # --- services ---------------------------------------------------------------------------------

    def _serve(self, handler: Handler) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            # nats-py runs a subscription's callbacks one after another: one slow query must not
            # hold up the next request, so each one gets a task of its own.
            task = asyncio.create_task(on_request(msg))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

        async def on_request(msg: Msg) -> None:
            try:
                request = orjson.loads(msg.data) if msg.data else {}
                if not isinstance(request, dict):
                    raise query.QueryRefused("the request must be a JSON object")
                reply: Any = {"ok": True, "result": await handler(request)}
            except query.QueryRefused as exc:
                reply = {"ok": False, "refused": True, "error": exc.reason}
            except NotFound as exc:
                reply = {"ok": False, "not_found": [exc.kind, exc.name], "error": str(exc)}
            except (JetdagError, ValueError) as exc:
                reply = {"ok": False, "refused": False, "error": str(exc)}
            except Exception as exc:  # a bad request must not take the auditor down
                log.exception("audit request on %s failed", msg.subject)
                reply = {"ok": False, "refused": False, "error": f"{type(exc).__name__}: {exc}"}
            if msg.reply:
                await msg.respond(orjson.dumps(reply, default=str))

        return on_message

    async def _sql(self, request: dict[str, Any]) -> dict[str, Any]:
        sql, name = request.get("sql"), request.get("saved")
        if name is not None:
            if name not in self.saved:
                known = ", ".join(sorted(self.saved)) or "none"
                raise query.QueryRefused(f"no saved query named {name!r} (saved: {known})")
            sql = self.saved[name].sql
        if not isinstance(sql, str):
            raise query.QueryRefused("'sql' must be a string holding one SELECT statement")
        max_rows = min(int(request.get("max_rows", 10_000)), 100_000)
        timeout = min(float(request.get("timeout", 10.0)), 60.0)
        async with self._reading(), self._slots:
            result = await self._run_sql(sql, max_rows, timeout)
        return result.to_dict()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """A read of the file: waits while an export has it closed, and holds the export off meanwhile."""
        await self._open.wait()
        self._queries += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._queries -= 1
            if not self._queries:
                self._idle.set()

    async def _run_sql(self, sql: str, max_rows: int, timeout: float) -> query.QueryResult:
        cursor = self.store.con.cursor()
        try:
            return await asyncio.to_thread(query.run_query, cursor, sql, max_rows=max_rows, timeout=timeout)
        finally:
            cursor.close()

    async def _prune(self, request: dict[str, Any]) -> dict[str, int]:
        days = float(request.get("days", self.retention_days))
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        return await self._writing(self.store.prune, cutoff)

    async def _export(self, request: dict[str, Any]) -> dict[str, Any]:
        to = request.get("to")
        if not isinstance(to, str) or not to:
            raise ValueError("'to' must name a directory")
        async with self._write:
            self._open.clear()  # new queries wait; running ones finish first
            try:
                await self._idle.wait()
                files = await _finishing(asyncio.to_thread(self.store.export, Path(to)))
            finally:
                self._open.set()
        return {"directory": to, "files": files}

    async def _info(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._reading():
            counts = await asyncio.to_thread(self.store.counts)
        return {"path": str(self.store.path), "ingested": self.ingested, "rows": counts}

    async def _summary(self, request: dict[str, Any]) -> dict[str, Any]:
        run_id = _text(request, "run_id")
        async with self._reading():
            found = await asyncio.to_thread(self.store.run_timings, run_id)
        if found is None:
            raise NotFound("run", run_id)
        run, tasks, attempts = found
        parents: dict[str, tuple[str, ...]] = {name: () for name in tasks}
        if run["workflow"] and run["version"]:
            with contextlib.suppress(NotFound):
                spec, _ = await self.defs.get(run["workflow"], run["version"])
                parents = {t.name: t.depends_on for t in spec.tasks}
        result = summarize(
            run_id, run["status"], run["started_at"], run["finished_at"], parents,
            {name: tasks.get(name, "waiting") for name in parents}, attempts,
        )  # fmt: skip
        return result.to_dict()

    async def _task(self, request: dict[str, Any]) -> dict[str, Any]:
        run_id, task = _text(request, "run_id"), _text(request, "task")
        after, limit = int(request.get("after", 0)), max(1, min(int(request.get("limit", 100)), 1000))
        async with self._reading():
            return await asyncio.to_thread(self.store.task_audit, run_id, task, after, limit)

    async def _tasks(self, request: dict[str, Any]) -> dict[str, Any]:
        """Task rows newest first, filtered and keyset-paged: `{"tasks": [...], "next": cursor or None}`."""
        filters: dict[str, Any] = {}
        for key in ("workflow", "task", "status", "worker"):
            value = request.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key!r} must be a string")
            filters[key] = value or None
        for key in ("since", "until"):
            value = request.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"{key!r} must be epoch seconds")
            filters[key] = value
        token = request.get("cursor")
        if token is not None and not isinstance(token, str):
            raise ValueError("'cursor' must be a string given out as 'next'")
        cursor = decode_cursor(token) if token else None
        limit = max(1, min(int(request.get("limit", 100)), MAX_TASKS_PAGE))
        async with self._reading():
            return await asyncio.to_thread(self.store.tasks, **filters, cursor=cursor, limit=limit)

    async def _saved(self, request: dict[str, Any]) -> list[dict[str, str]]:
        return [{"name": q.name, "description": q.description, "sql": q.sql} for q in self.saved.values()]

    async def _export_periodically(self, to: Path) -> None:
        """flowlord's backup_path: a Parquet copy of the whole log, refreshed every `export_every` seconds."""
        while True:
            await asyncio.sleep(self.export_every)
            try:
                await self._export({"to": str(to)})
                log.info("audit log exported to %s", to)
            except Exception:
                log.exception("periodic audit export to %s failed; trying again later", to)

    async def _prune_periodically(self) -> None:
        while True:
            try:
                removed = await self._prune({})
                if any(removed.values()):
                    log.info("audit retention (%g days) removed %s", self.retention_days, removed)
            except Exception:
                log.exception("audit retention failed; trying again later")
            await asyncio.sleep(self.prune_every)


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def _message(m: Msg) -> Message:
    meta = m.metadata
    stamp = meta.timestamp.timestamp() if meta.timestamp else time.time()
    return Message(meta.sequence.stream, m.subject, m.data, stamp)


async def _finishing(work: Awaitable[T]) -> T:
    """Await `work`; cancelled, wait for it to end before passing the cancellation on.

    A thread cannot be stopped: a batch cancelled at shutdown goes on writing, and DuckDB refuses to
    close a connection in the middle of a call ("connection is busy"), so the writer lock must not be
    let go before the thread is done."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
