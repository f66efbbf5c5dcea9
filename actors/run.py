"""RunActor: one live workflow run. Load snapshot → decide → publish commands → CAS save → ack."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import replace
from typing import Any

from nats.aio.msg import Msg

from jetdag.engine import subjects as S
from jetdag.engine.blobs import BLOB_ABOVE, Blobs, blob_name
from jetdag.engine.errors import NotFound, StaleOwner
from jetdag.engine.events import (
    Command,
    DeadLetter,
    DispatchTask,
    Event,
    InterruptTask,
    ReleaseSlot,
    RequestSlot,
    RunAdmitted,
    RunDeadline,
    RunHoldCheck,
    RunSubmitted,
    ScheduleDeadline,
    ScheduleDue,
    ScheduleHoldCheck,
    TaskDue,
    TaskFailed,
    Transition,
)
from jetdag.engine.ids import run_time
from jetdag.engine.messages import (
    MSG_ID,
    TaskMessage,
    encode_event,
    encode_interrupt,
    encode_step_parts,
    encode_task,
    msg_id,
    pack,
)
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.nats.publisher import acked
from jetdag.engine.run import decide
from jetdag.engine.state import RUN_DONE, RunState, RunStatus, new_run

from .context import EngineContext

log = logging.getLogger(__name__)

MAX_EARLY_DELIVERIES = 50
"""An event still ahead of its cause after this many deliveries names a run that will never exist."""

HEADROOM = 4096
"""Bytes of a message's max_payload left for its headers (message id, JetStream's own)."""

STEP_RECORD_MAX = 1 << 20
"""A step record above this many bytes (a step that readies over ~20,000 tasks) goes out in parts."""

FRESH = 60.0
"""A submission stored within this many seconds of its run id's creation, and handled within as many
seconds of being stored, starts a run that cannot exist yet: see `_fresh`."""


class RunActor:
    """Owns one run while it has work; its mailbox holds (event, message) pairs from the partition."""

    def __init__(self, ctx: EngineContext, partition: int, run_id: str, on_done: Any) -> None:
        self.ctx, self.partition, self.run_id = ctx, partition, run_id
        self.mailbox: asyncio.Queue[tuple[Event, Msg] | None] = asyncio.Queue()
        self._on_done = on_done  # called with the number of messages settled (puller credit)
        self._state: RunState | None = None
        self._revision = 0
        self._loaded = False
        self.stopped = False
        self.idle_since = asyncio.get_running_loop().time()
        """When the actor last finished a batch; its partition passivates it after `idle_timeout` (see `idle`)."""

    def tell(self, event: Event, msg: Msg) -> None:
        self.mailbox.put_nowait((event, msg))

    def idle(self) -> None:
        """Stop once the mailbox is empty: a partition's sweep tells this to actors idle for long. One
        timer per partition instead of a timeout around every mailbox read."""
        self.mailbox.put_nowait(None)

    async def run(self) -> None:
        """Process batches until told it is idle; on a crash, nak the batch and let the supervisor restart."""
        while True:
            first = await self.mailbox.get()
            if first is None:
                if self.mailbox.empty():
                    self.stopped = True  # passivate: the partition spawns a fresh actor on the next event
                    return
                continue  # work came in after the sweep looked
            batch = [first]
            while not self.mailbox.empty():
                if (more := self.mailbox.get_nowait()) is not None:
                    batch.append(more)
            try:
                await self._step(batch)
                self.idle_since = asyncio.get_running_loop().time()
            except BaseException:
                self._loaded = False  # memory may be ahead of the store: reload on restart
                for _, msg in batch:
                    await _settle(msg.nak())
                self._on_done(len(batch))
                raise

    async def _load(self) -> None:
        snapshot, self._revision = await self.ctx.runs.load(self.run_id)
        self._state = None
        if snapshot is not None:
            spec = None
            # A failed run still needs it: ignoring its failed task lets it go on (run control).
            if "spec" not in snapshot and snapshot["status"] not in ("succeeded", "cancelled"):
                spec = await self._spec(snapshot["workflow"], snapshot["def_rev"])
            self._state = RunState.from_dict(snapshot, spec)
            if self._state.spec is None and not self._state.done:
                self._state.status = RunStatus.FAILED
                self._state.error = f"definition {snapshot['workflow']}@{snapshot['def_rev']} is gone"
        self._loaded = True

    async def _spec(self, workflow: str, revision: int) -> WorkflowSpec | None:
        try:
            return (await self.ctx.defs.get(workflow, revision))[0]
        except NotFound:
            return None

    async def _create(self, ev: RunSubmitted) -> RunState:
        spec = WorkflowSpec.from_dict(ev.spec) if ev.spec else await self._spec(ev.workflow, ev.def_rev)
        return new_run(
            ev.run_id,
            ev.workflow,
            ev.def_rev,
            spec,
            ev.params,
            ev.ts,
            inline=ev.spec is not None,
            logical_time=ev.logical_time,
            meta=ev.meta,
        )

    async def _step(self, batch: list[tuple[Event, Msg]]) -> None:
        assumed_new = False
        if not self._loaded:
            if _fresh(*batch[0], time.time()):
                self._loaded = assumed_new = True  # nothing to read: this step creates the snapshot (revision 0)
            else:
                await self._load()
        commands: list[Command] = []
        transitions: list[Transition] = []
        settle: list[tuple[Msg, float | None]] = []
        for event, msg in batch:
            if self._state is None and isinstance(event, RunSubmitted):
                self._state = await self._create(event)
            now = time.time()
            decision = decide(self._state, event, now)
            self.ctx.counters.events += 1
            commands += decision.commands
            transitions += decision.transitions
            if decision.defer_until is None:
                settle.append((msg, None))
            elif _deliveries(msg) > MAX_EARLY_DELIVERIES and decision.defer_until - now < 5:
                log.warning(
                    "run %s: dropping %s after %d deliveries: %s",
                    self.run_id,
                    event.kind,
                    _deliveries(msg),
                    decision.reason,
                )
                settle.append((msg, -1.0))
            else:
                self.ctx.counters.deferred += 1
                settle.append((msg, max(0.001, decision.defer_until - now)))
        state = self._state
        if commands and not transitions and state is not None:
            await self._publish(state, commands, [])  # a timer re-armed: nothing changed to save
        if transitions and state is not None:
            await self._publish(state, commands, transitions)
            try:
                self._revision = await self.ctx.runs.save(self.run_id, state.stored(), self._revision)
            except StaleOwner:
                if not assumed_new:
                    raise
                # It existed after all: a submission sent again by a consumer rewind (which numbers its
                # deliveries from 1 again). Take the batch again from the stored snapshot; what this
                # attempt published carries the message ids of the first time and is dropped as such.
                log.info("run %s: submitted again; reading its snapshot", self.run_id)
                self._state, self._loaded = None, False
                await self._load()
                await self._step(batch)
                return
            self.ctx.counters.steps += 1
            await self._interrupt([c for c in commands if isinstance(c, InterruptTask)])
        for msg, delay in settle:
            await _settle(msg.ack() if delay is None else msg.term() if delay < 0 else msg.nak(delay))
        self._on_done(len(batch))

    async def _publish(self, state: RunState, commands: list[Command], transitions: list[Transition]) -> None:
        """Every command and the step record, awaited together: published before the state that caused them."""
        publish, p, run = self.ctx.publisher.publish, self.partition, self.run_id
        reply = S.event_subject(p, run)
        futures = []
        for cmd in commands:
            match cmd:
                case InterruptTask():
                    continue  # after the save (_interrupt): a handler is stopped only once its run is surely over
                case RequestSlot() | ReleaseSlot():
                    futures += await self._gate(state, cmd)
                    continue
                case ScheduleHoldCheck():
                    check = RunHoldCheck(run, time.time(), cmd.due)
                    headers = {MSG_ID: msg_id(run, "", int(cmd.due * 1000), "hold")}
                    futures.append(await publish(reply, encode_event(check), headers))
                    continue
                case DispatchTask():
                    task = TaskMessage(
                        run_id=run,
                        workflow=state.workflow,
                        task=cmd.task,
                        attempt=cmd.attempt,
                        handler=cmd.handler,
                        payload=cmd.payload,
                        params=state.params,
                        reply=reply,
                        timeout=cmd.timeout,
                        queue=cmd.queue,
                        priority=cmd.priority,
                        info=cmd.info,
                        job=cmd.job,
                    )
                    subject, data, kind = (
                        S.task_subject(cmd.queue, cmd.priority, cmd.handler, cmd.requires),
                        encode_task(task),
                        "task",
                    )
                    if len(data) > BLOB_ABOVE and cmd.payload is not None:
                        # A large rendered payload travels by reference; the worker resolves it (engine/blobs.py).
                        name = blob_name(run, cmd.task, cmd.attempt, "payload")
                        try:
                            ref = await Blobs(self.ctx.js).put(name, cmd.payload)
                            data = encode_task(replace(task, payload=ref))
                        except Exception as exc:  # the attempt fails (and is retried), never the step
                            why = f"its {len(data):,}-byte payload could not be stored in {S.BLOBS}: {exc}"
                            subject, data, kind = reply, self._failed(cmd, why, retryable=True), "result"
                    if kind == "task" and len(data) > self.ctx.nc.max_payload - HEADROOM:
                        # It can never be sent: answer the attempt with its failure, not fail the step for good.
                        limit = self.ctx.nc.max_payload
                        why = (
                            f"the task message is {len(data):,} bytes, over NATS's max_payload ({limit:,} bytes), "
                            f"with its payload in {S.BLOBS}: the run's params are too large; pass large inputs by "
                            "reference (a path or URL)"
                        )
                        subject, data, kind = reply, self._failed(cmd, why, retryable=False), "result"
                case ScheduleDue():
                    due = TaskDue(run, cmd.task, cmd.attempt, time.time(), cmd.due)
                    subject, data, kind = reply, encode_event(due), "due"
                case ScheduleDeadline():
                    deadline = RunDeadline(run, time.time(), cmd.due)
                    subject, data, kind = reply, encode_event(deadline), "deadline"
                case DeadLetter():
                    subject, kind = S.dlq_subject(cmd.queue), "dead"
                    data = pack(
                        {
                            "v": 1,
                            "k": "task.dead",
                            "run": run,
                            "workflow": state.workflow,
                            "task": cmd.task,
                            "attempt": cmd.attempt,
                            "queue": cmd.queue,
                            "error": cmd.error,
                            "params": state.params,
                            "ts": time.time(),
                        }
                    )
            about = ("", 0) if isinstance(cmd, ScheduleDeadline) else (cmd.task, cmd.attempt)
            headers = {MSG_ID: msg_id(run, *about, kind)}
            futures.append(await publish(subject, data, headers))
        if not transitions:
            await acked(futures)
            return
        # The step's id hashes its transitions: a step redone after a crash with other events is kept too.
        digest = zlib.crc32("|".join(f"{t.task}:{t.attempt}:{t.status}" for t in transitions).encode())
        step_id = f"{run}:step:{state.seq}:{digest:08x}"
        parts = encode_step_parts(run, state.seq, state.status.value, transitions, STEP_RECORD_MAX)
        for i, step in enumerate(parts):
            headers = {MSG_ID: step_id if len(parts) == 1 else f"{step_id}:{i}"}
            futures.append(await publish(S.step_subject(p, run), step, headers))
        await acked(futures)  # bounded: a publish lost with a dying server crashes the step, which is redone

    async def _gate(self, state: RunState, cmd: RequestSlot | ReleaseSlot) -> list[asyncio.Future[int]]:
        """Ask the workflow's `max_active_runs` gate for a slot, or give this run's back; wake every run it
        admits with a `run.admitted` on its own subject (the publishes' futures, awaited with the step's)."""
        assert state.spec is not None and state.spec.max_active_runs is not None
        limit, gate = state.spec.max_active_runs, self.ctx.gate
        if isinstance(cmd, ReleaseSlot):
            admitted = await gate.release(state.workflow, self.run_id, limit)
        else:
            admitted = await gate.request(state.workflow, self.run_id, limit, self._over if cmd.recheck else None)
        futures = []
        for run in admitted:
            subject = S.event_subject(S.partition_of(run, self.ctx.partitions), run)
            data = encode_event(RunAdmitted(run, time.time()))
            futures.append(await self.ctx.publisher.publish(subject, data, {MSG_ID: msg_id(run, "", 0, "admitted")}))
        return futures

    async def _over(self, runs: list[str]) -> set[str]:
        """Which of these runs holding slots are over (their release was lost). A run without a snapshot is not:
        a run takes its slot before its first save."""
        over = set()
        for run in runs:
            snapshot, _ = await self.ctx.runs.load(run)
            if snapshot is not None and snapshot["status"] in RUN_DONE:
                over.add(run)
        return over

    def _failed(self, cmd: DispatchTask, error: str, retryable: bool) -> bytes:
        """The failure of an attempt whose task message cannot go out, as the event that reports it."""
        return encode_event(TaskFailed(self.run_id, cmd.task, cmd.attempt, time.time(), error, "engine", retryable))

    async def _interrupt(self, interrupts: list[InterruptTask]) -> None:
        """Ask the workers to stop these attempts: core NATS, best effort (a late result changes nothing)."""
        for cmd in interrupts:
            try:
                await self.ctx.nc.publish(S.INTERRUPT, encode_interrupt(self.run_id, cmd.task, cmd.attempt))
            except Exception as exc:
                log.debug("run %s: interrupt of %s#%d not sent: %s", self.run_id, cmd.task, cmd.attempt, exc)


def _fresh(event: Event, msg: Msg, now: float) -> bool:
    """Whether `event` submits a run whose snapshot cannot exist yet, so the actor need not read it.

    Two submissions of one run id that are both stored in `JD_EVENTS` are at least its duplicate window
    (120 s, Topology.duplicate_window) apart: the second is dropped as a duplicate otherwise. This one was
    stored within FRESH s of the moment its id was made (run ids carry it) and is handled within FRESH s
    of being stored, so an earlier one would predate the id and a later one is not stored yet. Ids chosen
    by hand (not time-ordered) and redeliveries are read first. Were it wrong anyway (clocks more than a
    minute apart), the create fails as StaleOwner and the step is redone from the stored snapshot, its
    commands deduplicated by their message ids.
    """
    if not isinstance(event, RunSubmitted) or _deliveries(msg) > 1:
        return False
    try:
        stored = msg.metadata.timestamp.timestamp()
        made = run_time(event.run_id)
    except Exception:
        return False
    return abs(stored - made) < FRESH and now - stored < FRESH


def _deliveries(msg: Msg) -> int:
    try:
        return msg.metadata.num_delivered or 1
    except Exception:
        return 1


async def _settle(op: Any) -> None:
    # An ack that fails (connection lost) is not fatal: the message is redelivered and decide ignores it.
    try:
        await op
    except Exception as exc:
        log.debug("ack/nak failed: %s", exc)
