"""Scheduler: fires the cron triggers of every workflow, each tick once, on any number of engines.

Each clock trigger is an entry in a heap ordered by its next tick, on every engine. The engine that owns the
partition of the workflow (`partition_of(workflow)`) fires its ticks on time, and says so (`jd.sched.firing`);
every other engine is a backup (`rank` 1, 2, …) and fires a tick only if, `BACKUP_DELAY` after it (a
`BACKUP_STEP` more per rank), the schedule's state (watched in `jd_schedules`) shows no fire of it and the
partition has gone quiet (no heartbeat of its owner, no engine announcing or recording a tick of it within
`BACKUP_QUIET`): a slow owner is left to it, and a killed owner's ticks are late by a second or so, not by
the lease TTL.

A fire publishes the runs' submissions first, then records the tick in `jd_schedules` with compare-and-set.
Run ids are derived from (workflow, trigger, tick, batch item) (engine/firing.py), so two engines firing one
tick, or a fire repeated after a crash between the two writes, start one run; and the compare-and-set makes
the engine that lost the race read again and find the tick done. Which ticks fire after downtime, and what a
tick does while the previous run of its schedule still goes, are decided from the trigger's stored progress
(engine/ticks.py `plan`; `_overlap` here).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jetdag.engine import subjects as S
from jetdag.engine.cron import Cron
from jetdag.engine.errors import StaleOwner
from jetdag.engine.events import RunCancel, RunSubmitted
from jetdag.engine.firing import Firing, iso, submissions
from jetdag.engine.messages import MSG_ID, command_id, encode_event, pack
from jetdag.engine.model import Overlap, Trigger, WorkflowSpec
from jetdag.engine.nats.publisher import acked
from jetdag.engine.schedules import ScheduleState, TriggerState
from jetdag.engine.state import RUN_DONE
from jetdag.engine.stores.schedules import ScheduleStore
from jetdag.engine.ticks import Plan, grace, plan

from .catalog import Catalog
from .context import EngineContext

log = logging.getLogger(__name__)

BACKUP_DELAY = 0.5
"""Seconds after a tick before an engine that does not own the workflow's partition fires it, if nobody has."""

BACKUP_STEP = 0.25
"""Seconds more for each backup after the first, and between looks while the owner is at work."""

HEARTBEAT = 0.25
"""Seconds between an engine's announcements of the partitions it owns (`jd.sched.firing`)."""

LISTEN = 0.02
"""Seconds a look that may step in for another engine first lets the loop read what the others said."""

BACKUP_QUIET = 1.25
"""Seconds without a sign of life from the engine that fires a partition (its heartbeat, an announcement that
it fires a tick, a schedule state it wrote) after which its backups take it for dead and fire."""

BACKUP_PATIENCE = 30.0
"""Seconds after a tick that backups leave it to an engine seen at work; then they fire it whatever they see."""


def _delay(rank: int) -> float:
    return 0.0 if rank == 0 else BACKUP_DELAY + (rank - 1) * BACKUP_STEP


BUFFER_CHECK = 1.0
"""Seconds between looks at a tick held by `overlap: buffer_one`, whose previous run may have ended."""

RECORDS = 500
"""Fires recorded at once in the background (see `_look_all`)."""

_TRIES = 5
"""Compare-and-set attempts per fire before it is left to the next look (another engine keeps writing)."""


class Ticks:
    """A cron's ticks, remembered: the entries that share an expression and zone ask for the same ticks (10,000
    schedules of `* * * * *` all want the minute after this one), and one croniter step costs more than the
    rest of a fire."""

    def __init__(self, cron: Cron) -> None:
        self.cron = cron
        self._after: dict[float, float] = {}

    def next(self, after: float) -> float:
        tick = self._after.get(after)
        if tick is None:
            if len(self._after) >= 256:
                self._after.clear()
            tick = self._after[after] = self.cron.next(after)
        return tick


@dataclass(slots=True)
class Entry:
    """One clock trigger of one workflow, as the heap holds it."""

    workflow: str
    key: str
    trigger: Trigger
    ticks: Ticks
    generation: int
    """The catalog version of the workflow it was made from: a newer version makes older entries stale."""
    at: float = 0.0
    """When to look at it next: its next tick, on every engine (who fires it is decided then, as partitions move
    between engines), or later while it is another engine's to fire."""

    @property
    def cron(self) -> Cron:
        return self.ticks.cron

    def next(self, after: float) -> float:
        return self.ticks.next(after)


@dataclass(slots=True)
class Quick:
    """A fire of the usual case: the runs of one tick, and the state that records it."""

    entry: Entry
    state: ScheduleState
    revision: int
    runs: list[RunSubmitted]
    due: float
    following: float
    """The tick after the one fired."""
    acks: list[asyncio.Future[int]] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        ctx: EngineContext,
        catalog: Catalog,
        schedules: ScheduleStore,
        rank: Callable[[str], int],
        clock: Callable[[], float] = time.time,
        owned: Callable[[], Iterable[int]] = tuple,
    ) -> None:
        self.ctx, self.catalog, self.schedules, self.rank, self.clock = ctx, catalog, schedules, rank, clock
        self.owned = owned
        """The partitions this engine owns now."""
        self._heap: list[tuple[float, int, Entry]] = []
        self._order = itertools.count()
        self._generation: dict[str, int] = {}
        self._crons: dict[tuple[str, str | None], Ticks] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._pushed = asyncio.Event()
        self._scheduling = asyncio.Event()
        """Set once there is a clock trigger to fire (then the heartbeat beats)."""

    async def run(self) -> None:
        changes = self.catalog.subscribe()
        self._background(self._heartbeat())
        try:
            await self.catalog.ready.wait()
            for workflow in list(self.catalog.specs):
                self._load(workflow)
            while True:
                while not changes.empty():
                    self._load(changes.get_nowait())
                due = self._due()
                if due:
                    await self._look_all(due)
                    continue
                delay = self._heap[0][0] - self.clock() if self._heap else None
                self._pushed.clear()
                waiting, pushed = asyncio.ensure_future(changes.get()), asyncio.ensure_future(self._pushed.wait())
                try:
                    await asyncio.wait(
                        [waiting, pushed], timeout=None if delay is None else max(0.0, delay),
                        return_when=asyncio.FIRST_COMPLETED,
                    )  # fmt: skip
                finally:
                    waiting.cancel()
                    pushed.cancel()
                if waiting.done() and not waiting.cancelled():
                    self._load(waiting.result())
        finally:
            self.catalog.unsubscribe(changes)
            for task in list(self._tasks):
                task.cancel()

    async def _look_all(self, due: list[Entry]) -> None:
        """Look at the due entries: those of the partitions this engine owns at once, then, after letting the loop
        read what the other engines said (LISTEN), those it may fire for another engine."""
        mine: list[Entry] = []
        others: list[Entry] = []
        for entry in due:  # split once: every entry goes to one of the passes, whatever the ranks are later
            (mine if self.rank(entry.workflow) == 0 else others).append(entry)
        if mine:
            await self._pass(mine)
        if others:
            # A timer runs before the loop's next look at its sockets: without this, a backup would decide by
            # what it had heard before the heartbeats now waiting there.
            await asyncio.sleep(LISTEN)
            await self._pass(others)

    async def _pass(self, due: list[Entry]) -> None:
        """The usual case (one tick on time, overlap allowed, nothing buffered) is fired in one pass that builds
        and sends every submission before anything else runs (10,000 in 0.2 s); the ticks are then recorded
        together. Everything else, and whatever that pass could not send, goes the careful way (`_look`). A task
        per schedule, or a pause now and then to let the connection send, let the engine start on the first runs
        in between, and the last of 10,000 fires went out two seconds late."""
        now, quick, careful, busy = self.clock(), [], [], set()
        for entry in due:
            fire = self._quick(entry, now) if entry.workflow not in busy else None
            if fire is None:
                careful.append(entry)
            elif isinstance(fire, float):
                self._push(entry, fire)  # another engine's to fire, for now
            else:
                busy.add(entry.workflow)  # a second trigger of it due now: its state is about to change
                quick.append(fire)
        await self._announce(quick)
        sent, began = [], time.monotonic()
        for fire in quick:  # never suspends (a publish only fills the connection's buffer): nothing runs in between
            try:
                fire.acks = [await self._send(event) for event in fire.runs]
                sent.append(fire)
            except Exception as exc:
                log.warning("schedule %s/%s: %s; trying again", fire.entry.workflow, fire.entry.key, exc)
                careful.append(fire.entry)
        if sent:
            late, took = now - min(f.due for f in sent), time.monotonic() - began
            log.debug("fired %d schedules %.3f s after their tick, in %.3f s", len(sent), late, took)
        # Recorded in the background, RECORDS at a time: 10,000 records take the loop a second or two, and the next
        # second's ticks must wait neither for them nor behind them in the loop's queue (each entry goes back on
        # the heap once its record is done).
        self._background(self._record_all(sent, careful, now))

    async def _heartbeat(self) -> None:
        """Every HEARTBEAT seconds, tell the other engines which partitions this one owns: it fires their ticks.
        Silent (and asleep) while no workflow has a clock trigger."""
        while True:
            await self._scheduling.wait()
            await self._say(self.owned())
            await asyncio.sleep(HEARTBEAT)

    async def _announce(self, quick: list[Quick]) -> None:
        """Tell the other engines which partitions this engine fires a tick of now, as their owner or as the backup
        that steps in: the others then leave them to it."""
        await self._say({S.partition_of(f.entry.workflow, self.ctx.partitions) for f in quick})

    async def _say(self, partitions: Iterable[int]) -> None:
        if partitions := sorted(partitions):
            body = {"v": 1, "engine": self.ctx.engine_id, "partitions": partitions}
            with contextlib.suppress(Exception):  # only spares the backups some work
                await self.ctx.nc.publish(S.FIRING, pack(body))

    async def _record_all(self, sent: list[Quick], careful: list[Entry], now: float) -> None:
        """The careful looks first (they may still fire), then the records of what was sent, those due again
        soonest first: an every-second schedule fired with 10,000 minutely ones must be back on the heap before
        its next second, not after the 10,000 records."""
        for start in range(0, len(careful), RECORDS):
            await asyncio.gather(*(self._look(entry, now) for entry in careful[start : start + RECORDS]))
        sent = sorted(sent, key=lambda fire: fire.following)
        for start in range(0, len(sent), RECORDS):
            await asyncio.gather(*(self._record(fire) for fire in sent[start : start + RECORDS]))

    def _background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _quick(self, entry: Entry, now: float) -> Quick | float | None:
        """The fire of the usual case, built (not sent); when to look again if it is another engine's to fire for
        now; None when it is not the usual case."""
        found = self.catalog.specs.get(entry.workflow)
        state, revision = self.catalog.state(entry.workflow)
        progress = state.trigger(entry.key)
        trigger = entry.trigger
        if found is None or not state.enabled or progress.tick is None or progress.buffered is not None:
            return None
        if trigger.overlap is not Overlap.ALLOW and progress.runs:
            return None
        cursor = max(progress.tick, state.changed_at or progress.tick)
        due = entry.next(cursor)
        after = entry.next(due)
        if not due <= now < after or now - due > grace(after - due):
            return None
        wait = self._backing_up(entry, due, now)
        if wait is not None:
            return wait
        spec, version = found
        runs = submissions(spec, version, Firing(trigger, entry.key, due, due), time.time(), read=_read_file)
        new = replace(progress, tick=due, fired=due, runs=tuple(r.run_id for r in runs))
        return Quick(entry, state.with_trigger(entry.key, new), revision, runs, due, after)

    async def _send(self, event: RunSubmitted) -> asyncio.Future[int]:
        subject = S.event_subject(S.partition_of(event.run_id, self.ctx.partitions), event.run_id)
        return await self.ctx.publisher.publish(subject, encode_event(event), {MSG_ID: S.submission_id(event.run_id)})

    async def _record(self, fire: Quick) -> None:
        """Once its submissions are stored, record the tick (compare-and-set); put the entry back at its next tick."""
        entry = fire.entry
        try:
            await acked(fire.acks)
            revision = await self.schedules.write(self.ctx.publisher, entry.workflow, fire.state, fire.revision)
        except StaleOwner:  # another engine recorded something first: look again from what it wrote
            await self.catalog.refresh(entry.workflow)
            await self._look(entry)
            return
        except Exception as exc:  # NATS trouble: the same tick fires again shortly, under the same run ids
            log.warning("schedule %s/%s: %s; trying again in 1 s", entry.workflow, entry.key, exc)
            if self._generation.get(entry.workflow) == entry.generation:
                self._push(entry, self.clock() + 1.0)
            return
        self.catalog.note(entry.workflow, fire.state, revision)
        self.ctx.counters.fired += len(fire.runs)
        if self._generation.get(entry.workflow) == entry.generation:
            self._push(entry, fire.following)

    def _load(self, workflow: str) -> None:
        """(Re)make the entries of a workflow's clock triggers from its newest version; older ones go stale."""
        generation = self._generation[workflow] = self._generation.get(workflow, 0) + 1
        found = self.catalog.specs.get(workflow)
        if found is None:
            return
        spec, _ = found
        now = self.clock()
        for trigger in spec.triggers:
            if not trigger.cron:
                continue
            try:
                ticks = self._ticks(trigger.cron, trigger.timezone, now)
            except ValueError as exc:  # validated when applied; an engine of another version may read it otherwise
                log.warning("workflow %s: cron %r cannot be used: %s", workflow, trigger.cron, exc)
                continue
            entry = Entry(workflow, trigger.key("cron"), trigger, ticks, generation)
            self._push(entry, now)  # looked at now: it finds its place from its stored progress

    def _ticks(self, expr: str, timezone: str | None, now: float) -> Ticks:
        """One Ticks per expression and zone, shared by the entries that have it."""
        key = (expr, timezone)
        ticks = self._crons.get(key)
        if ticks is None:
            ticks = Ticks(Cron(expr, timezone))
            ticks.next(now)  # ValueError for one that never fires
            self._crons[key] = ticks
        return ticks

    def _push(self, entry: Entry, at: float) -> None:
        entry.at = at
        heapq.heappush(self._heap, (at, next(self._order), entry))
        self._pushed.set()  # the loop may be asleep until a later time, or with nothing to wait for
        self._scheduling.set()

    def _due(self) -> list[Entry]:
        """Pop the entries whose time has come (dropping stale ones); a backup's entry waits its delay."""
        now, out = self.clock(), []
        while self._heap and self._heap[0][0] <= now:
            _, _, entry = heapq.heappop(self._heap)
            if self._generation.get(entry.workflow) != entry.generation:
                continue
            out.append(entry)
        return out

    async def _look(self, entry: Entry, now: float | None = None) -> None:
        """Fire what is due of one trigger as of `now` (default: the clock), then put it back at its next tick (or
        its backup time). Entries looked at together share `now`: a trigger first seen starts counting from it, and
        the ticks after one `now` are computed once for all of them (Ticks)."""
        now = self.clock() if now is None else now
        try:
            following = await self._fire_due(entry, now)
        except Exception as exc:  # NATS trouble: look again shortly; the ids make a repeated fire harmless
            log.warning("schedule %s/%s: %s; trying again in 1 s", entry.workflow, entry.key, exc)
            following = now + 1.0
        if self._generation.get(entry.workflow) == entry.generation:
            self._push(entry, following)

    async def _fire_due(self, entry: Entry, now: float) -> float:
        """Fire the due ticks of `entry` as of `now`; when to look next."""
        for _ in range(_TRIES):
            found = self.catalog.specs.get(entry.workflow)
            if found is None:
                return now + 60.0  # gone; its entries are stale by now
            spec, version = found
            state, revision = self.catalog.state(entry.workflow)
            progress = state.trigger(entry.key)
            if not state.enabled:
                return entry.next(now)  # off: nothing fires (see changed_at once on)
            cursor = progress.tick
            if cursor is not None and state.changed_at is not None:
                cursor = max(cursor, state.changed_at)  # switched on since: the ticks while off are passed over
            if cursor is not None and progress.buffered is None:
                upcoming = entry.next(cursor)
                if upcoming > now:
                    return upcoming
                wait = self._backing_up(entry, upcoming, now)
                if wait is not None:
                    return wait  # the owner's to fire; ours only if it has not by then
            new, started = await self._advance(entry, spec, version, progress, cursor, now)
            if new != progress:
                changed = state.with_trigger(entry.key, new)
                try:
                    revision = await self.schedules.write(self.ctx.publisher, entry.workflow, changed, revision)
                except StaleOwner:
                    await self.catalog.refresh(entry.workflow)  # another engine wrote: look again from there
                    continue
                self.catalog.note(entry.workflow, changed, revision)
                self.ctx.counters.fired += started
            following = entry.next(new.tick if new.tick is not None else now)
            if new.buffered is not None:
                following = min(following, now + BUFFER_CHECK)
            return following
        return now + 1.0

    def _backing_up(self, entry: Entry, due: float, now: float) -> float | None:
        """When to look again if the tick `due` is still another engine's to fire; None when this one fires it.

        The owner fires at once. A backup waits its delay, then for as long as the partition shows signs of life
        (its owner's heartbeat, or another engine announcing a tick of it or writing a schedule state of it,
        within the last BACKUP_QUIET seconds), up to BACKUP_PATIENCE: a slow owner is left to it, a dead one
        goes quiet. An owner's heartbeat comes from its own loop, which no busy engine loop holds up."""
        rank = self.rank(entry.workflow)
        if rank == 0:
            return None
        if now < due + _delay(rank):
            return due + _delay(rank)
        partition = S.partition_of(entry.workflow, self.ctx.partitions)
        heard = self.catalog.touched.get(partition, -math.inf)
        if now - heard < BACKUP_QUIET and now < due + BACKUP_PATIENCE:
            return now + BACKUP_STEP
        return None

    async def _advance(
        self, entry: Entry, spec: WorkflowSpec, version: int, progress: TriggerState, cursor: float | None, now: float
    ) -> tuple[TriggerState, int]:
        """The trigger's progress after firing what is due (the submissions published and acknowledged), and how
        many runs started."""
        if cursor is None:  # first seen: its ticks count from now on (and a restart knows where it began)
            return replace(progress, tick=now), 0
        trigger, started = entry.trigger, 0
        if progress.buffered is not None:
            if not await self._still_going(progress.runs):
                progress, started = await self._start(entry, spec, version, progress, progress.buffered, now)
                progress = replace(progress, buffered=None)
            elif self._due_after(entry, progress, cursor, now) is None:
                return progress, 0
        todo = self._plan(entry, cursor, now)
        if todo.skipped:
            why = f"missed {todo.skipped} tick(s) from {iso(todo.skipped_from or 0)} to {iso(todo.skipped_to or 0)}"
            why += f" (catchup: {trigger.catchup.value})"
            log.info("schedule %s/%s: %s", entry.workflow, entry.key, why)
            progress = replace(progress, skipped=progress.skipped + todo.skipped, last_skip=why)
        for tick in todo.fire:
            action = await self._overlap(trigger.overlap, progress)
            if action == "skip" or (action == "buffer" and progress.buffered is not None):
                why = f"tick {iso(tick)} skipped: the previous run was still going (overlap: {trigger.overlap.value})"
                progress = replace(progress, skipped=progress.skipped + 1, last_skip=why)
            elif action == "buffer":
                progress = replace(progress, buffered=tick)
            else:
                if action == "cancel":
                    await self._cancel(progress.runs, tick)
                progress, n = await self._start(entry, spec, version, progress, tick, now)
                started += n
        return replace(progress, tick=max(todo.cursor, progress.tick or todo.cursor)), started

    def _plan(self, entry: Entry, cursor: float, now: float) -> Plan:
        """What fires now: in the common case the one tick after the cursor, on time (one step of the cron, where
        `plan` would build croniters afresh: at 10,000 schedules a minute that was most of a fire's cost)."""
        due = entry.next(cursor)
        if due > now:
            return Plan((), cursor)
        after = entry.next(due)
        if now < after and now - due <= grace(after - due):
            return Plan((due,), due)
        trigger = entry.trigger
        return plan(entry.cron, trigger.catchup, trigger.catchup_window, cursor, now)

    def _due_after(self, entry: Entry, progress: TriggerState, cursor: float, now: float) -> float | None:
        """The first tick after `cursor` when it has come, else None."""
        tick = entry.next(cursor)
        return tick if tick <= now else None

    async def _start(
        self, entry: Entry, spec: WorkflowSpec, version: int, progress: TriggerState, tick: float, now: float
    ) -> tuple[TriggerState, int]:
        firing = Firing(entry.trigger, entry.key, tick, tick)
        runs = submissions(spec, version, firing, time.time(), read=_read_file)
        await self.publish(runs)
        log.debug("schedule %s/%s fired %s: %d run(s)", entry.workflow, entry.key, iso(tick), len(runs))
        return replace(progress, fired=tick, runs=tuple(r.run_id for r in runs)), len(runs)

    async def publish(self, runs: list[RunSubmitted]) -> None:
        """The submissions, into their runs' partitions, acknowledged together."""
        await acked([await self._send(event) for event in runs])

    async def _overlap(self, policy: Overlap, progress: TriggerState) -> str:
        """ "fire", "skip", "buffer" or "cancel": what a tick does given the runs the previous one started."""
        if policy is Overlap.ALLOW or not progress.runs or not await self._still_going(progress.runs):
            return "fire"
        return {Overlap.SKIP: "skip", Overlap.BUFFER_ONE: "buffer", Overlap.CANCEL_PREVIOUS: "cancel"}[policy]

    async def _still_going(self, runs: tuple[str, ...]) -> bool:
        for run in runs:
            snapshot, _ = await self.ctx.runs.load(run)
            if snapshot is None or snapshot["status"] not in RUN_DONE:
                return True  # no snapshot yet: submitted, not yet started
        return False

    async def _cancel(self, runs: tuple[str, ...], tick: float) -> None:
        """Cancel the previous tick's runs (overlap: cancel_previous): one command per run and tick, however sent."""
        futures = []
        for run in runs:
            event = RunCancel(
                run, time.time(), f"overlap: cancel_previous (the tick of {iso(tick)} starts)", "scheduler"
            )
            subject = S.event_subject(S.partition_of(run, self.ctx.partitions), run)
            headers = {MSG_ID: command_id(run, "cancel", f"overlap-{tick}")}
            futures.append(await self.ctx.publisher.publish(subject, encode_event(event), headers))
        await acked(futures)


def _read_file(path: str) -> bytes:
    """A batch's meta-file, read when its trigger fires (so an edited file counts from its next tick)."""
    return Path(path).read_bytes()
