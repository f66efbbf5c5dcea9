"""Scheduler: fires the cron triggers of every workflow, each tick once, on any number of engines.

Each clock trigger is an entry in a heap ordered by its next tick. The engine that owns the partition of the
workflow (`partition_of(workflow)`) fires its ticks on time; every other engine is its backup and fires a
tick only if, `BACKUP_DELAY` after it, the schedule's state (watched in `jd_schedules`) shows no fire of it:
a killed owner's ticks are late by about half a second, not by the lease TTL.

A fire publishes the runs' submissions first, then records the tick in `jd_schedules` with compare-and-set.
Run ids are derived from (workflow, trigger, tick, batch item) (engine/firing.py), so two engines firing one
tick, or a fire repeated after a crash between the two writes, start one run; and the compare-and-set makes
the engine that lost the race read again and find the tick done. Which ticks fire after downtime, and what a
tick does while the previous run of its schedule still goes, are decided from the trigger's stored progress
(engine/ticks.py `plan`; `_overlap` here).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from jetdag.engine import subjects as S
from jetdag.engine.cron import Cron
from jetdag.engine.errors import StaleOwner
from jetdag.engine.events import RunCancel, RunSubmitted
from jetdag.engine.firing import Firing, iso, submissions
from jetdag.engine.messages import MSG_ID, command_id, encode_event
from jetdag.engine.model import Overlap, Trigger, WorkflowSpec
from jetdag.engine.nats.publisher import acked
from jetdag.engine.schedules import TriggerState
from jetdag.engine.state import RUN_DONE
from jetdag.engine.stores.schedules import ScheduleStore
from jetdag.engine.ticks import Plan, grace, plan

from .catalog import Catalog
from .context import EngineContext

log = logging.getLogger(__name__)

BACKUP_DELAY = 0.5
"""Seconds after a tick before an engine that does not own the workflow's partition fires it, if nobody has."""

BUFFER_CHECK = 1.0
"""Seconds between looks at a tick held by `overlap: buffer_one`, whose previous run may have ended."""

CHUNK = 200
"""Fires started before the scheduler lets the connection send what they published."""

_TRIES = 5
"""Compare-and-set attempts per fire before it is left to the next look (another engine keeps writing)."""


@dataclass(slots=True)
class Entry:
    """One clock trigger of one workflow, as the heap holds it."""

    workflow: str
    key: str
    trigger: Trigger
    cron: Cron
    generation: int
    """The catalog version of the workflow it was made from: a newer version makes older entries stale."""
    at: float = 0.0
    """When to look at it next."""
    memo: tuple[float, float] = (math.nan, math.nan)
    """The last (tick, the tick after it) computed: each fire needs the tick after the one before, twice."""

    def next(self, after: float) -> float:
        if self.memo[0] != after:
            self.memo = (after, self.cron.next(after))
        return self.memo[1]


class Scheduler:
    def __init__(
        self,
        ctx: EngineContext,
        catalog: Catalog,
        schedules: ScheduleStore,
        owns: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx, self.catalog, self.schedules, self.owns, self.clock = ctx, catalog, schedules, owns, clock
        self._heap: list[tuple[float, int, Entry]] = []
        self._order = itertools.count()
        self._generation: dict[str, int] = {}
        self._wake = asyncio.Event()

    async def run(self) -> None:
        changes = self.catalog.subscribe()
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
                waiting = asyncio.ensure_future(changes.get())
                try:
                    done, _ = await asyncio.wait([waiting], timeout=None if delay is None else max(0.0, delay))
                finally:
                    waiting.cancel()
                if done:
                    self._load(waiting.result())
        finally:
            self.catalog.unsubscribe(changes)

    async def _look_all(self, due: list[Entry]) -> None:
        """Look at the due entries together, started a chunk at a time with a pause between: the connection's
        flusher then sends each chunk's submissions while the next is built, instead of after all 10,000."""
        looks = []
        for start in range(0, len(due), CHUNK):
            looks += [asyncio.ensure_future(self._look(entry)) for entry in due[start : start + CHUNK]]
            await asyncio.sleep(0)
        await asyncio.gather(*looks)

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
                cron = Cron(trigger.cron, trigger.timezone)
                cron.next(now)
            except ValueError as exc:  # validated when applied; an engine of another version may read it otherwise
                log.warning("workflow %s: cron %r cannot be used: %s", workflow, trigger.cron, exc)
                continue
            entry = Entry(workflow, trigger.key("cron"), trigger, cron, generation)
            self._push(entry, now)  # looked at now: it finds its place from its stored progress

    def _push(self, entry: Entry, at: float) -> None:
        entry.at = at
        heapq.heappush(self._heap, (at, next(self._order), entry))

    def _due(self) -> list[Entry]:
        """Pop the entries whose time has come (dropping stale ones); a backup's entry waits its delay."""
        now, out = self.clock(), []
        while self._heap and self._heap[0][0] <= now:
            _, _, entry = heapq.heappop(self._heap)
            if self._generation.get(entry.workflow) != entry.generation:
                continue
            out.append(entry)
        return out

    async def _look(self, entry: Entry) -> None:
        """Fire what is due of one trigger, then put it back at its next tick (or its backup time)."""
        now = self.clock()
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
                return self._when(entry, entry.next(now))  # off: nothing fires (see changed_at once on)
            cursor = progress.tick
            if cursor is not None and state.changed_at is not None:
                cursor = max(cursor, state.changed_at)  # switched on since: the ticks while off are passed over
            if cursor is not None and progress.buffered is None:
                upcoming = entry.next(cursor)
                if upcoming > now:
                    return self._when(entry, upcoming)
                if not self.owns(entry.workflow) and now < upcoming + BACKUP_DELAY:
                    return upcoming + BACKUP_DELAY  # the owner's to fire; ours only if it has not by then
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
            return self._when(entry, following)
        return now + 1.0

    def _when(self, entry: Entry, tick: float) -> float:
        return tick if self.owns(entry.workflow) else tick + BACKUP_DELAY

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
        futures = []
        for event in runs:
            subject = S.event_subject(S.partition_of(event.run_id, self.ctx.partitions), event.run_id)
            headers = {MSG_ID: S.submission_id(event.run_id)}
            futures.append(await self.ctx.publisher.publish(subject, encode_event(event), headers))
        await acked(futures)

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
