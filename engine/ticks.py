"""Which ticks of a cron trigger to fire, now or in a backfill: pure, no IO, the clock passed in.

The scheduler stores one cursor per trigger (the newest tick it has fired or passed over) and asks `plan`
what to do about the ticks since; `backfill` and `steps` list the ticks of a backfill and of flowlord's
batching (`for=-168h&by=day`).
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from dataclasses import dataclass
from typing import Final

from jetdag.engine.cron import Cron
from jetdag.engine.errors import BackfillTooLarge
from jetdag.engine.model import BatchBy, Catchup

MAX_GRACE: Final = 60.0
"""The most `grace` ever allows."""

SKIPPED_CAP: Final = 1_000_000
"""`Plan.skipped` stops counting here."""

_STEP: Final = {BatchBy.HOUR: 3600, BatchBy.DAY: 86400}


def grace(period: float) -> float:
    """How late a tick may fire and still count as on time, given the `period` from it to the next tick.

    An engine restart or a partition failover (another engine takes over within about 0.5-6 s) delays
    ticks by seconds; that must not turn an hourly tick into a missed one that `catchup: none` drops, so
    the grace grows with the period up to a minute. It never exceeds the period (but at least 2 s), so an
    every-second schedule back from an outage does not fire a burst of stale ticks as if they were on time.
    """
    return min(MAX_GRACE, max(2.0, period))


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do about a trigger's due ticks."""

    fire: tuple[float, ...]
    """Ticks to fire now, oldest first."""
    cursor: float
    """The newest tick considered, fired or passed over; the caller stores it and passes it to the next plan."""
    skipped: int = 0
    """Missed ticks passed over (not fired), counted up to `SKIPPED_CAP`."""
    skipped_from: float | None = None
    """The oldest tick passed over, for the log and the dashboard."""
    skipped_to: float | None = None
    """The newest tick passed over."""


@dataclass(frozen=True, slots=True)
class _Passed:
    """Ticks passed over: `count` of them, from `first` to `last`."""

    count: int
    first: float
    last: float


def plan(cron: Cron, catchup: Catchup, window: float, cursor: float, now: float, *, limit: int = 1000) -> Plan:
    """The ticks in (`cursor`, `now`] to fire now, under `catchup` with a `window` (seconds) for `Catchup.ALL`.

    A due tick no older than `grace` of its period is on time and fires under every policy. An older one is
    missed: NONE passes over all missed ticks; LATEST fires the newest missed one unless a tick on time
    supersedes it; ALL fires every missed tick within `window` of `now`, oldest first, and passes over the
    older ones. At most `limit` ticks fire: then the cursor stops at the last one fired and the next plan
    goes on from there, so no tick is lost and no burst exceeds the limit.

    The work is bounded whatever the cursor: at most the ticks of the last `MAX_GRACE` seconds and `limit`
    missed ones are stepped through, the rest is reached with `Cron.prev`/`Cron.next` jumps and counted by
    `Cron.count` (arithmetic, not iteration).
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    first = cron.next(cursor)
    if first > now:
        return Plan((), cursor)
    # Only ticks of the last MAX_GRACE seconds can be on time: step through those, jump over the older ones.
    edge = max(cursor, math.ceil(now - MAX_GRACE) - 1)
    recent: list[tuple[float, bool]] = []
    tick = first if first > edge else cron.next(edge)
    while tick <= now:
        after = cron.next(tick)
        recent.append((tick, now - tick <= grace(after - tick)))
        tick = after
    older = first <= edge  # due ticks before the last MAX_GRACE seconds, in (cursor, edge]: all missed
    newest = recent[-1][0] if recent else cron.prev(edge)
    assert newest is not None  # `first` is due
    on_time = [t for t, ok in recent if ok]
    missed = [t for t, ok in recent if not ok]
    fire = list(on_time)
    passed = list(missed)  # the recent missed ticks passed over
    passed_upto = edge if older else cursor  # and the older ones in (cursor, passed_upto]
    if catchup is Catchup.LATEST and not on_time:
        fire.append(newest)
        if missed:
            passed.pop()
        else:
            passed_upto = newest - 1
    elif catchup is Catchup.ALL:
        oldest_kept = math.ceil(now - window) - 1  # ticks after it are within the window
        fire += [t for t in missed if t > oldest_kept]
        passed = [t for t in missed if t <= oldest_kept]
        if older and oldest_kept < edge:
            # Older ticks come before every recent one: the oldest `limit` of them are all that can fire, and
            # one more tells the limit below to stop the cursor at the last one fired.
            passed_upto, count = max(cursor, oldest_kept), 0
            tick = cron.next(passed_upto)
            while tick <= edge and count <= limit:
                fire.append(tick)
                tick, count = cron.next(tick), count + 1
    fire.sort()
    if len(fire) > limit:
        fire = fire[:limit]
        newest = fire[-1]
        passed = [t for t in passed if t < newest]
    return _plan(cron, tuple(fire), newest, passed, (cursor, first, passed_upto))


def _plan(
    cron: Cron, fire: tuple[float, ...], cursor: float, passed: list[float], older: tuple[float, float, float]
) -> Plan:
    """The Plan that fires `fire`, moves the cursor to `cursor` and passes over `passed` and the ticks in
    (`since`, `upto`] of `older` = (since, the first tick after since, upto)."""
    ranges = [_Passed(len(passed), passed[0], passed[-1])] if passed else []
    since, first, upto = older
    if first <= upto:
        last = cron.prev(upto)
        assert last is not None  # `first` is at or before it
        ranges.append(_Passed(cron.count(since, upto, SKIPPED_CAP), first, last))
    if not ranges:
        return Plan(fire, cursor)
    return Plan(
        fire,
        cursor,
        skipped=min(SKIPPED_CAP, sum(r.count for r in ranges)),
        skipped_from=min(r.first for r in ranges),
        skipped_to=max(r.last for r in ranges),
    )


def backfill(cron: Cron | None, by: BatchBy | None, start: float, end: float, *, limit: int = 10_000) -> list[float]:
    """The ticks of a backfill from `start` to `end`, both included: the cron's fire times when `by` is None,
    else calendar steps from `start` (months keep the day of the month, clamped to the month's length, in
    UTC). More than `limit` ticks raise `BackfillTooLarge` before any is listed."""
    if by is not None:
        count = _count_steps(start, end, by)
        if count > limit:
            raise BackfillTooLarge(count, limit)
        return [_step(start, i, by) for i in range(count)]
    if cron is None:
        raise ValueError("a backfill needs a cron schedule or a step (--by hour, day or month): it has neither")
    before = math.ceil(start) - 1  # fire times are whole seconds: the first at or after start follows it
    count = cron.count(before, end)
    if count > limit:
        raise BackfillTooLarge(count, limit)
    ticks, tick = [], before
    for _ in range(count):
        tick = cron.next(tick)
        ticks.append(tick)
    return ticks


def steps(origin: float, span: float, by: BatchBy) -> list[float]:
    """flowlord batching (`for=-168h&by=day`): the times from `origin` to `origin + span` (a negative span
    looks back) a calendar step apart, both ends included, oldest first. Months keep `origin`'s day of
    the month, clamped to each month's length, in UTC."""
    if span >= 0:
        return [_step(origin, i, by) for i in range(_count_steps(origin, origin + span, by))]
    count = _count_steps(origin, origin + span, by, sign=-1)
    return [_step(origin, -i, by) for i in reversed(range(count))]


def _step(origin: float, i: int, by: BatchBy) -> float:
    """`origin` moved by `i` steps of `by`."""
    if by is not BatchBy.MONTH:
        return origin + i * _STEP[by]
    when = dt.datetime.fromtimestamp(origin, dt.UTC)
    year, month = divmod(when.month - 1 + i, 12)
    year += when.year
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day).timestamp()


def _count_steps(origin: float, end: float, by: BatchBy, sign: int = 1) -> int:
    """How many steps from `origin` (included) reach no further than `end`, going forward (`sign` 1) or back."""
    if (end - origin) * sign < 0:
        return 0
    if by is not BatchBy.MONTH:
        return math.floor((end - origin) * sign / _STEP[by]) + 1
    first, last = (dt.datetime.fromtimestamp(t, dt.UTC) for t in (origin, end))
    i = abs((last.year - first.year) * 12 + last.month - first.month) + 1  # one too many at most
    while (_step(origin, sign * i, by) - end) * sign > 0:
        i -= 1
    return i + 1
