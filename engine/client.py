"""The async Python client: what the CLI, the web app and user code use to talk to jetdag."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from jetdag.engine import subjects as S
from jetdag.engine.durations import parse_duration
from jetdag.engine.errors import AuditError, AuditUnavailable, ConfigError, NotFound
from jetdag.engine.ids import new_run_id
from jetdag.engine.messages import MSG_ID, pack
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.nats.setup import close, connect
from jetdag.engine.state import RUN_DONE
from jetdag.engine.stores.defs import Applied, DefStore
from jetdag.engine.stores.runs import RunStore
from jetdag.engine.views import run_view

RUN_ID_HEADER = "Jd-Run-Id"
DELAY_HEADER = "Jd-Delay"
PRIORITY_HEADER = "Jd-Priority"
TIME_HEADER = "Jd-Time"
"""A submission's logical time ({yyyy}… in templates): epoch seconds or ISO 8601."""
META_HEADER = "Jd-Meta"
"""A submission's metadata ({meta:key} in templates): a JSON object."""


class Client:
    """Submit, enqueue, wait for and inspect runs. Use `async with await Client.connect(url)`."""

    def __init__(self, nc: NATS, js: JetStreamContext, runs: RunStore, defs: DefStore) -> None:
        self.nc, self.js, self.runs, self.defs = nc, js, runs, defs

    @classmethod
    async def connect(cls, url: str, name: str = "jetdag-client", timeout: float = 5.0) -> Client:
        """ConfigError when no NATS answers at `url` within `timeout` seconds, or it holds no jetdag yet."""
        try:  # nats-py retries a first connect forever with our reconnect settings: bound it here
            nc = await asyncio.wait_for(connect(url, name), timeout)
        except TimeoutError:
            raise ConfigError(f"cannot reach NATS at {url} (tried for {timeout:g}s): is `jetdag up` running?") from None
        js = nc.jetstream()
        try:
            return cls(nc, js, await RunStore.open(js), await DefStore.open(js))
        except BucketNotFoundError:
            await close(nc)
            raise ConfigError(
                f"the NATS at {url} holds no jetdag buckets: start `jetdag up` or `jetdag engine` against it first"
            ) from None

    async def close(self) -> None:
        await close(self.nc)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def apply(self, spec: WorkflowSpec) -> tuple[Applied, int]:
        """Register `spec` (a new version when it changed)."""
        return await self.defs.apply(spec)

    async def submit(
        self,
        workflow: str,
        params: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
        logical_time: dt.datetime | float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> str:
        """Start a run of `workflow` (its name or id); returns the run id once JetStream holds the submission.

        `logical_time` is the time its templates render (default: now); `meta` fills `{meta:key}`.
        """
        key = S.workflow_key(workflow)
        await self.defs.get(key)  # NotFound now beats a failed run later
        run_id = run_id or new_run_id()
        headers = {MSG_ID: run_id, RUN_ID_HEADER: run_id}
        if logical_time is not None:
            stamp = logical_time.timestamp() if isinstance(logical_time, dt.datetime) else float(logical_time)
            headers[TIME_HEADER] = repr(stamp)
        if meta:
            headers[META_HEADER] = orjson.dumps(meta).decode()
        await self.js.publish(S.submit_subject(key), pack(params or {}), headers=headers)
        return run_id

    async def enqueue(
        self,
        handler: str,
        payload: Any = None,
        *,
        queue: str = "default",
        delay: float | str | None = None,
        priority: int | None = None,
        run_id: str | None = None,
    ) -> str:
        """Run one task of `handler` as a run of its own; `delay` holds it back, `priority` orders it."""
        run_id = run_id or new_run_id()
        headers = {MSG_ID: run_id, RUN_ID_HEADER: run_id}
        if delay is not None:
            headers[DELAY_HEADER] = str(parse_duration(delay))
        if priority is not None:
            headers[PRIORITY_HEADER] = str(priority)
        await self.js.publish(S.enqueue_subject(queue, handler), pack(payload), headers=headers)
        return run_id

    async def status(self, run_id: str) -> dict[str, Any]:
        """The run's current view; NotFound when no engine has created it (yet)."""
        snapshot, _ = await self.runs.load(run_id)
        if snapshot is None:
            raise NotFound("run", run_id)
        return run_view(snapshot)

    async def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run ends; its final view. TimeoutError after `timeout` seconds."""

        async def until_done() -> dict[str, Any]:
            async for snapshot in self.runs.watch(run_id):
                if snapshot["status"] in RUN_DONE:
                    return run_view(snapshot)
            raise NotFound("run", run_id)

        return await asyncio.wait_for(until_done(), timeout)

    async def audit(self, verb: str, request: dict[str, Any] | None = None, timeout: float = 70.0) -> Any:
        """Ask the auditor (`jd.audit.<verb>`); AuditError when it refuses or fails, AuditUnavailable when none runs."""
        try:
            msg = await self.nc.request(S.audit_subject(verb), orjson.dumps(request or {}), timeout=timeout)
        except NoRespondersError:
            raise AuditUnavailable(
                "no auditor is running: the audit log is served by `jetdag up` or `jetdag auditor`"
            ) from None
        except NatsTimeout:
            raise AuditError(f"the auditor did not answer {verb!r} within {timeout:g}s") from None
        reply = orjson.loads(msg.data)
        if reply.get("not_found"):
            raise NotFound(*reply["not_found"])
        if not reply.get("ok"):
            raise AuditError(str(reply.get("error")), refused=bool(reply.get("refused")))
        return reply["result"]

    async def sql(self, sql: str, *, max_rows: int = 10_000, timeout: float = 10.0) -> dict[str, Any]:
        """Run one read-only SELECT over the audit log: `{"columns", "types", "rows", "truncated", "elapsed_ms"}`."""
        request = {"sql": sql, "max_rows": max_rows, "timeout": timeout}
        result: dict[str, Any] = await self.audit("sql", request, timeout=timeout + 10)
        return result

    async def summary(self, run_id: str) -> dict[str, Any]:
        """Per-task wait and run times, stages, the critical path and the task that caused a failure."""
        result: dict[str, Any] = await self.audit("summary", {"run_id": run_id})
        return result

    async def task_audit(self, run_id: str, task: str, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """The attempts of one task and a page of its events (ids above `after`, oldest first); `next` pages on."""
        result: dict[str, Any] = await self.audit(
            "task", {"run_id": run_id, "task": task, "after": after, "limit": limit}
        )
        return result

    async def runs_list(
        self, *, workflow: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Runs newest first, without their tasks, filtered by workflow and status."""
        out: list[dict[str, Any]] = []
        for run_id in reversed(await self.runs.ids()):
            snapshot, _ = await self.runs.load(run_id)
            if snapshot is None:
                continue
            if (workflow and snapshot["workflow"] != workflow) or (status and snapshot["status"] != status):
                continue
            out.append(run_view(snapshot, tasks=False))
            if len(out) >= limit:
                break
        return out
