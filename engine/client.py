"""The async Python client: what the CLI, the web app and user code use to talk to jetdag."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import orjson
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import BucketNotFoundError, NotFoundError

from jetdag.engine import firing, templates
from jetdag.engine import subjects as S
from jetdag.engine.durations import parse_duration
from jetdag.engine.errors import (
    AuditError,
    AuditUnavailable,
    ConfigError,
    ControlError,
    JetdagError,
    NotFound,
    RunWaitTimeout,
    SubmissionError,
)
from jetdag.engine.events import Event, RunCancel, RunPause, RunResume, RunSubmitted, TaskIgnore
from jetdag.engine.ids import new_run_id
from jetdag.engine.messages import MSG_ID, command_id, encode_event, pack
from jetdag.engine.model import BatchBy, WorkflowSpec, one_task_spec
from jetdag.engine.nats.capture import capture, release
from jetdag.engine.nats.publisher import acked
from jetdag.engine.nats.setup import close, connect
from jetdag.engine.run import rerun_done, why_not
from jetdag.engine.schedules import has_schedule, schedule_view
from jetdag.engine.state import RUN_DONE, RunState, TaskStatus
from jetdag.engine.stores.defs import Applied, DefStore
from jetdag.engine.stores.runs import RunStore
from jetdag.engine.stores.schedules import ScheduleStore
from jetdag.engine.views import run_view
from jetdag.engine.workers import UNSERVED_AFTER, served, unserved_reason, worker_view

RUN_ID_HEADER = "Jd-Run-Id"
DELAY_HEADER = "Jd-Delay"
PRIORITY_HEADER = "Jd-Priority"
TIME_HEADER = "Jd-Time"
"""A submission's logical time ({yyyy}… in templates): epoch seconds or ISO 8601."""
META_HEADER = "Jd-Meta"
"""A submission's metadata ({meta:key} in templates): a JSON object."""


def _already(verb: str, status: str) -> bool:
    """The run is already where `verb` would take it: a retried request is not an error."""
    return (verb, status) in {
        ("cancel", "cancelled"),
        ("pause", "paused"),
        ("resume", "running"),
        ("resume", "pending"),
    }


class Client:
    """Submit, enqueue, wait for and inspect runs. Use `async with await Client.connect(url)`."""

    def __init__(
        self, nc: NATS, js: JetStreamContext, runs: RunStore, defs: DefStore, schedules: ScheduleStore
    ) -> None:
        self.nc, self.js, self.runs, self.defs, self.schedules = nc, js, runs, defs, schedules
        self.publisher = runs.publisher

    @classmethod
    async def connect(cls, url: str, name: str = "jetdag-client", timeout: float = 5.0) -> Client:
        """ConfigError when no NATS answers at `url` within `timeout` seconds, or it holds no jetdag yet."""
        try:  # nats-py retries a first connect forever with our reconnect settings: bound it here
            nc = await asyncio.wait_for(connect(url, name), timeout)
        except TimeoutError:
            raise ConfigError(f"cannot reach NATS at {url} (tried for {timeout:g}s): is `jetdag up` running?") from None
        js = nc.jetstream()
        try:
            return cls(nc, js, await RunStore.open(nc, js), await DefStore.open(js), await ScheduleStore.open(js))
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
        """Register `spec` (a new version when it changed). A workflow with an `on_message` trigger listens from
        now on: messages published on its subject once this returns are kept for the engines to start runs of."""
        try:
            before: WorkflowSpec | None = (await self.defs.get(spec.name))[0]
        except NotFound:
            before = None
        subject = next((t.subject for t in spec.triggers if t.subject), None)
        if subject is not None:
            await capture(self.js, spec.name, subject)
        applied = await self.defs.apply(spec)
        if subject is None and before is not None and any(t.subject for t in before.triggers):
            await release(self.js, spec.name)
        return applied

    async def scheduled(self) -> list[dict[str, Any]]:
        """Every workflow that a trigger starts, with its schedule (`schedule_view`), by name."""
        now, out = dt.datetime.now(dt.UTC), []
        for name in await self.defs.names():
            try:
                spec, _ = await self.defs.get(name)
            except NotFound:
                continue
            if has_schedule(spec):
                out.append(schedule_view(spec, await self.schedules.get(name), now))
        return out

    async def backfill(
        self,
        workflow: str,
        start: dt.datetime | float,
        end: dt.datetime | float,
        *,
        by: str | None = None,
        trigger: str | None = None,
        params: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Start the runs of the workflow's ticks from `start` to `end` (both included), oldest first: of its clock
        triggers (or the one named `trigger`), or every hour/day/month from `start` with `by`. Each answers
        `{"run_id", "logical_time", "trigger", "meta", "exists"}`; a run that exists already (fired by the scheduler,
        or by this backfill before) is not started again. `dry_run` only says what it would start. `progress`
        hears (started, to start) as submissions are stored. BackfillError when it cannot be planned."""
        key = S.workflow_key(workflow)
        spec, revision = await self.defs.get(key)
        step = BatchBy(by) if by is not None else None
        low, high = (t.timestamp() if isinstance(t, dt.datetime) else float(t) for t in (start, end))
        runs = firing.backfill(
            spec, revision, low, high, time.time(), by=step, trigger=trigger, params=params, meta=meta,
            read=lambda path: Path(path).read_bytes(),
        )  # fmt: skip
        exists = await self._exist([r.run_id for r in runs])
        plan = [
            {"run_id": r.run_id, "logical_time": r.logical_time, "trigger": r.trigger, "exists": r.run_id in exists,
             "meta": r.meta or {}}
            for r in runs
        ]  # fmt: skip
        if dry_run:
            return plan
        todo = [r for r in runs if r.run_id not in exists]
        for done in range(0, len(todo), 256):
            futures = []
            for event in todo[done : done + 256]:
                subject = S.event_subject(S.partition_of(event.run_id), event.run_id)
                data, headers = encode_event(event), {MSG_ID: S.submission_id(event.run_id)}
                futures.append(await self.publisher.publish(subject, data, headers))
            await acked(futures)
            if progress is not None:
                progress(min(done + 256, len(todo)), len(todo))
        return plan

    async def _exist(self, run_ids: list[str]) -> set[str]:
        """Which of these runs exist (have a snapshot), asking a few hundred at a time."""
        found: set[str] = set()
        for start in range(0, len(run_ids), 256):
            chunk = run_ids[start : start + 256]
            loads = await asyncio.gather(*(self.runs.load(r) for r in chunk))
            found |= {r for r, (snapshot, _) in zip(chunk, loads, strict=True) if snapshot is not None}
        return found

    async def schedule(self, workflow: str) -> dict[str, Any]:
        """Whether the workflow's schedule is on, and when its clock fires next; NotFound for no such workflow."""
        spec, _ = await self.defs.get(workflow)
        return schedule_view(spec, await self.schedules.get(workflow), dt.datetime.now(dt.UTC))

    async def toggle_schedule(self, workflow: str, enabled: bool | None = None, *, by: str = "") -> dict[str, Any]:
        """Switch the workflow's schedule on or off (None: the other way round). While off, its triggers
        start no runs; `submit` still does. ControlError when nothing but people starts its runs."""
        spec, _ = await self.defs.get(workflow)
        if not has_schedule(spec):
            raise ControlError(f"workflow {workflow!r} has no schedule: no cron, file or message trigger starts it")
        state = await self.schedules.set_enabled(workflow, enabled, by)
        return schedule_view(spec, state, dt.datetime.now(dt.UTC))

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
        _, revision = await self.defs.get(key)  # NotFound now beats a failed run later
        run_id = run_id or new_run_id()
        if isinstance(logical_time, dt.datetime):
            logical_time = logical_time.timestamp()
        event = RunSubmitted(
            run_id, key, revision, params or {}, time.time(),
            logical_time=None if logical_time is None else float(logical_time), meta=meta or None,
        )  # fmt: skip
        return await self._start(event)

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
        if not S.is_token(queue):
            raise SubmissionError(f"queue {queue!r}: use letters, digits, '-' and '_'")
        if not S.is_handler_name(handler):
            raise SubmissionError(f"handler {handler!r}: use {S.HANDLER_RULE}")
        if priority is not None and priority not in S.PRIORITIES:
            raise SubmissionError(f"priority must be 0..9 (9 first), got {priority!r}")
        run_id, now = run_id or new_run_id(), time.time()
        spec = one_task_spec(handler, queue, payload, S.DEFAULT_PRIORITY if priority is None else priority)
        not_before = now + parse_duration(delay) if delay is not None else None
        return await self._start(RunSubmitted(run_id, handler, 0, {}, now, spec=spec, not_before=not_before))

    async def _start(self, event: RunSubmitted) -> str:
        """Write the submission into its run's partition, as the inbox does with what is published to
        `jd.submit`/`jd.enqueue`: one hop less, and the same message id, so a retry starts one run."""
        if not S.is_token(event.run_id) or len(event.run_id) > 64:
            raise SubmissionError(f"run id {event.run_id!r}: use up to 64 letters, digits, '-' and '_'")
        subject = S.event_subject(S.partition_of(event.run_id), event.run_id)
        headers = {MSG_ID: S.submission_id(event.run_id)}
        await acked([await self.publisher.publish(subject, encode_event(event), headers)])
        return event.run_id

    async def status(self, run_id: str) -> dict[str, Any]:
        """The run's current view; NotFound when no engine has created it (yet)."""
        snapshot, _ = await self.runs.load(run_id)
        if snapshot is None:
            raise NotFound("run", run_id)
        view = run_view(snapshot)
        if _waits_long(view):
            with contextlib.suppress(NotFound, ControlError):
                await self.say_unserved(view, await self._spec_of(run_id, snapshot))
        return view

    async def say_unserved(self, view: dict[str, Any], spec: WorkflowSpec) -> None:
        """Each task of the run `view` queued for UNSERVED_AFTER seconds while no live worker has its handler
        for its queue gets `"waiting": "no live worker has handler 'x' for queue 'q'"`."""
        if not _waits_long(view):
            return
        offers = served(await self.workers())
        specs = {t.name: t for t in spec.tasks}
        for name in _waits_long(view):
            task = specs.get(name)
            reason = None if task is None else unserved_reason(task.queue, task.handler, task.requires, offers)
            if reason is not None:
                view["tasks"][name]["waiting"] = reason

    # --- run control (README "Run control") --------------------------------------------------------

    async def cancel(self, run_id: str, reason: str = "", *, by: str = "", command_id: str | None = None) -> None:
        """Cancel the run: its tasks not yet final are cancelled and running handlers interrupted.

        NotFound for an unknown run; ControlError when it already succeeded or failed (cancelling a
        cancelled run is fine and changes nothing). `command_id` makes a retried call one command.
        """
        await self._control(run_id, "cancel", RunCancel(run_id, time.time(), reason, by), command_id)

    async def pause(self, run_id: str, *, reason: str = "", by: str = "", command_id: str | None = None) -> None:
        """Stop dispatching the run's tasks (running ones finish); ControlError when it is over."""
        await self._control(run_id, "pause", RunPause(run_id, time.time(), reason, by), command_id)

    async def resume(self, run_id: str, *, by: str = "", command_id: str | None = None) -> None:
        """Dispatch a paused run's ready tasks again; ControlError when it is over (a running run: nothing to do)."""
        await self._control(run_id, "resume", RunResume(run_id, time.time(), by), command_id)

    async def ignore(
        self, run_id: str, task: str, *, reason: str = "", by: str = "", command_id: str | None = None
    ) -> None:
        """Mark a failed (or retrying) task `ignored`: it counts as a success for its children, and a run
        that failed only because of it goes on. ControlError for any other task, or a cancelled or timed-out run."""
        await self._control(run_id, "ignore", TaskIgnore(run_id, task, time.time(), reason, by), command_id, task)

    async def _control(
        self, run_id: str, verb: str, event: Event, caller_id: str | None, task: str | None = None
    ) -> None:
        view = await self.status(run_id)
        statuses = {name: t["status"] for name, t in view["tasks"].items()}
        why = why_not(verb, view["status"], statuses, task)
        if why is not None:
            if _already(verb, view["status"]):
                return
            raise ControlError(f"cannot {verb} run {run_id}: {why}")
        subject = S.event_subject(S.partition_of(run_id), run_id)
        headers = {MSG_ID: command_id(run_id, verb, caller_id or uuid.uuid4().hex)}
        await self.js.publish(subject, encode_event(event), headers=headers)

    async def rerun(self, run_id: str, from_task: str | None = None, *, new_id: str | None = None) -> str:
        """Start a new run of the finished run's workflow (same version, params, logical time and metadata)
        that runs `from_task` and its descendants, or without it the tasks that did not succeed and their
        descendants; the rest is copied as succeeded with its results. Returns the new run's id.

        NotFound for an unknown run; ControlError when it has not finished, its definition is gone, or
        `from_task` is not one of its tasks. `new_id` makes a retried call start one run.
        """
        snapshot, _ = await self.runs.load(run_id)
        if snapshot is None:
            raise NotFound("run", run_id)
        if snapshot["status"] not in RUN_DONE:
            raise ControlError(
                f"cannot rerun run {run_id}: it is still {snapshot['status']}; wait for it or cancel it first"
            )
        spec = await self._spec_of(run_id, snapshot)
        done = rerun_done(run_id, spec, snapshot["tasks"], from_task, snapshot.get("start"))
        new = new_id or new_run_id()
        event = RunSubmitted(
            new, snapshot["workflow"], snapshot["def_rev"], snapshot["params"], time.time(), spec=snapshot.get("spec"),
            logical_time=snapshot.get("logical_time"), meta=snapshot.get("meta") or None, done=done or None,
            rerun_of=run_id, start=snapshot.get("start"),
        )  # fmt: skip
        return await self._start(event)

    async def _spec_of(self, run_id: str, snapshot: dict[str, Any]) -> WorkflowSpec:
        """The definition the run ran: its own (a single enqueued task) or its version in jd_defs."""
        if snapshot.get("spec"):
            return WorkflowSpec.from_dict(snapshot["spec"])
        workflow, revision = snapshot["workflow"], snapshot["def_rev"]
        try:
            if revision < 1:  # it never started: its workflow was unknown
                raise NotFound("workflow", workflow)
            return (await self.defs.get(workflow, revision))[0]
        except NotFound:
            raise ControlError(f"cannot rerun run {run_id}: its definition {workflow}@{revision} is gone") from None

    async def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run ends; its final view. TimeoutError after `timeout` seconds."""

        async def until_done() -> dict[str, Any]:
            async for snapshot in self.runs.watch(run_id):
                if snapshot["status"] in RUN_DONE:
                    return run_view(snapshot)
            raise NotFound("run", run_id)

        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await until_done()
        except TimeoutError:
            if not deadline.expired():  # a NATS request inside timed out: not this wait
                raise
            assert timeout is not None
            snapshot, _ = await self.runs.load(run_id)
            if snapshot is None:
                raise RunWaitTimeout(run_id, timeout, "in the inbox", {}) from None
            tasks = {name: t["status"] for name, t in snapshot["tasks"].items()}
            raise RunWaitTimeout(run_id, timeout, snapshot["status"], tasks) from None

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

    async def workers(self) -> list[dict[str, Any]]:
        """Every worker with a heartbeat in `jd_workers`, by id: queues, running attempts, age of the last
        beat, and whether it is alive or presumed dead (`jetdag.engine.workers.worker_view`)."""
        kv = await self.js.key_value(S.WORKERS_KV)
        infos: list[dict[str, Any]] = []
        for _ in range(3):
            watcher = await kv.watchall()
            try:
                while (entry := await watcher.updates(timeout=5.0)) is not None:
                    if entry.operation is None and entry.value:
                        with contextlib.suppress(Exception):
                            info = msgpack.unpackb(entry.value, raw=False)
                            if isinstance(info, dict):
                                infos.append(info)
                    if not entry.delta:
                        break
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()
            # nats-py can signal "no more entries" before delivering the first one: ask again then.
            if infos or (await kv.status()).values == 0:
                break
        now = time.time()
        return sorted((worker_view(info, now) for info in infos), key=lambda w: str(w["id"]))

    async def tasks(
        self,
        *,
        workflow: str | None = None,
        task: str | None = None,
        status: str | None = None,
        worker: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """Task rows of the audit log newest first: `{"tasks": [...], "next": cursor or None}`.

        Filters are exact matches; `since`/`until` are epoch seconds; pass `next` back as `cursor`
        for the following page (keyset-paged: a deep page costs what the first does). `limit` ≤ 500."""
        request = {"workflow": workflow, "task": task, "status": status, "worker": worker, "since": since,
                   "until": until, "cursor": cursor, "limit": limit}  # fmt: skip
        result: dict[str, Any] = await self.audit("tasks", {k: v for k, v in request.items() if v is not None})
        return result

    async def dead_letters(
        self, *, queue: str | None = None, before: int | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """Dead letters of JD_DLQ newest first: `{"letters": [...], "next": seq or None}`.

        `queue` keeps one queue's letters (`_invalid` for malformed messages); pass `next` back as
        `before` for the following page (paged by stream sequence)."""
        try:
            state = (await self.js.stream_info(S.DLQ)).state
        except NotFoundError:
            return {"letters": [], "next": None}
        subject = S.dlq_subject(queue) if queue else S.dlq_subject(">")
        high = min(before - 1, state.last_seq) if before is not None else state.last_seq
        # JetStream reads forward only (get "next by subject" skips gaps and other queues on the
        # server): read windows back from `high`, each twice the last, until the page is full.
        found: list[RawStreamMsg] = []
        window = max(2 * limit, 64)
        while high >= state.first_seq and len(found) <= limit:
            low = max(state.first_seq, high - window + 1)
            chunk: list[RawStreamMsg] = []
            seq = low
            while seq <= high:
                try:
                    msg = await self.js.get_msg(S.DLQ, seq=seq, subject=subject, next=True)
                except NotFoundError:
                    break
                if msg.seq is None or msg.seq > high:
                    break
                chunk.append(msg)
                seq = msg.seq + 1
            found.extend(reversed(chunk))
            high, window = low - 1, window * 2
        page = [dead_letter_view(m) for m in found[:limit]]
        return {"letters": page, "next": page[-1]["seq"] if len(found) > limit else None}

    async def requeue(self, seq: int) -> dict[str, Any]:
        """Run the dead task of letter `seq` again, then delete the letter: `{"seq", "run_id", "queue", "handler"}`.

        A run's task that failed for good is settled: the engine applies no result to it any more
        (re-running a run in place is run control's `rerun`). So requeueing runs the task again as a
        run of its own, exactly as `enqueue` would: the same handler, queue and priority, and the
        payload the dead attempt got (rendered again from the run's snapshot: same params, logical
        time and upstream results). It goes through JD_INBOX to `jd.task.<queue>.<prio>` with a new
        Nats-Msg-Id, gets the default retry policy, and its result lands in the new run (and the
        audit log) while the dead run stays failed. NotFound for an unknown `seq`; RequeueRefused for
        a letter that cannot run again (`_invalid` ones, or a run whose snapshot is gone)."""
        try:
            msg = await self.js.get_msg(S.DLQ, seq=seq)
        except NotFoundError:
            raise NotFound("dead letter", str(seq)) from None
        letter = dead_letter_view(msg)
        if letter["queue"] == S.INVALID_DLQ or letter["kind"] != "task.dead":
            raise RequeueRefused(
                f"dead letter {seq} is a malformed message ({letter.get('reason') or 'no reason given'}), not a task:"
                " nothing can run it; fix it and publish it again by hand"
            )
        run_id, name = str(letter["run"]), str(letter["task"])
        snapshot, _ = await self.runs.load(run_id)
        if snapshot is None:
            raise RequeueRefused(f"run {run_id} is gone from {S.RUNS_KV}: the dead task's payload cannot be rebuilt")
        spec = None if "spec" in snapshot else (await self.defs.get(snapshot["workflow"], snapshot["def_rev"]))[0]
        state = RunState.from_dict(snapshot, spec)
        if state.spec is None or name not in state.spec.by_name:
            raise RequeueRefused(f"run {run_id} has no task {name!r}")
        task = state.spec.by_name[name]
        payload = task.payload
        if name in state.spec.templated:
            scope = templates.Scope(
                logical_time=dt.datetime.fromtimestamp(state.logical_time, dt.UTC),
                params=state.params,
                meta=state.meta or {},
                results={n: t.result for n, t in state.tasks.items() if t.status is TaskStatus.SUCCEEDED},
            )
            try:
                payload = templates.render(payload, scope)
            except templates.TemplateError as exc:
                raise RequeueRefused(f"the task's payload cannot be rendered, so it would fail again: {exc}") from None
        new_run = new_run_id()
        # The letter's sequence is the dedupe id: two requeues of one letter at once start one run.
        headers = {MSG_ID: f"requeue:{seq}", RUN_ID_HEADER: new_run, PRIORITY_HEADER: str(task.priority)}
        ack = await self.js.publish(S.enqueue_subject(task.queue, task.handler), pack(payload), headers=headers)
        if ack.duplicate:
            raise NotFound("dead letter", f"{seq} (already requeued)")
        # Deleted only once the inbox holds the new run: a crash in between leaves the letter to retry.
        with contextlib.suppress(NotFoundError):
            await self.js.delete_msg(S.DLQ, seq)
        return {"seq": seq, "run_id": new_run, "queue": task.queue, "handler": task.handler}


class RequeueRefused(JetdagError):
    """A dead letter that cannot be run again; the message says why."""


def dead_letter_view(msg: RawStreamMsg) -> dict[str, Any]:
    """One JD_DLQ message as the API shows it: a dead task's record, or a malformed message's reason."""
    headers = msg.headers or {}
    subject = msg.subject or ""
    view: dict[str, Any] = {
        "seq": msg.seq,
        "queue": subject.removeprefix("jd.dlq."),
        "time": msg.time.timestamp() if msg.time else None,
        "kind": "invalid",
        "reason": headers.get("Jd-Reason"),
        "subject": headers.get("Jd-Subject"),
        "size": len(msg.data or b""),
    }
    body: Any = None
    with contextlib.suppress(Exception):
        body = msgpack.unpackb(msg.data, raw=False) if msg.data else None
    if view["queue"] != S.INVALID_DLQ and isinstance(body, dict) and body.get("k") == "task.dead":
        view.update(
            kind="task.dead",
            reason=body.get("error"),
            run=body.get("run"),
            workflow=body.get("workflow"),
            task=body.get("task"),
            attempt=body.get("attempt"),
            ts=body.get("ts"),
        )
    view["requeueable"] = view["kind"] == "task.dead"
    return view


def _waits_long(view: dict[str, Any]) -> list[str]:
    """The tasks of a run's view queued for UNSERVED_AFTER seconds or more."""
    since = time.time() - UNSERVED_AFTER
    tasks = view.get("tasks") or {}
    return [n for n, t in tasks.items() if t["status"] == "queued" and t.get("queued_at", since) < since]
