"""Cron expressions as jetdag reads them, in every definition format: 5 fields, 6 with the seconds first, or
an alias (`@daily`, `@hourly`, …), and the times they fire at.

Six fields put the seconds first, as flowlord, Goflow (`WithSeconds`), Quartz and Spring write them. croniter,
which computes the times, wants them last: `to_croniter` moves them. One reading for every format means the
same string never means two things in two files.

Times are epoch seconds. A schedule fires at whole seconds of wall-clock time in its time zone (UTC without
one). Daylight saving time, in that zone, follows Vixie cron, which tells *fixed* schedules (none of the
second, minute and hour fields starts with `*`: `30 2 * * *`, `@daily`) from *wildcard* ones (`*/30 * * * *`,
`@hourly`):

- Wall-clock times that a spring-forward gap skips: a fixed schedule fires once, at the first instant after
  the gap, however many of its times the gap held (`30 2 * * *` in Europe/Berlin fires at 03:00 CEST on
  2026-03-29); for a wildcard schedule the skipped times do not exist (`*/30 * * * *` goes from 01:30 CET to
  03:00 CEST, every real 30 minutes, and `* 2 * * *` does not fire that night).
- A wall-clock time that a fall-back repeats: a fixed schedule fires once, at the first occurrence (02:30 CEST
  on 2026-10-25, not again at 02:30 CET); a wildcard schedule fires at both, as they are different real minutes.

A daily job therefore runs exactly once on both change days, and a frequent one keeps its real-time rhythm.

croniter only ever sees naive wall-clock time here, where it is exact; these rules map its times to real
instants. (Left to itself, croniter 7 gets a zone's changes mostly right but not always: across Lord Howe's
30-minute fall-back it drops a repeated `*/20` tick and its `get_prev` returns one 20 minutes early.) A zone's
offset changes are found by sampling its offset a day apart and bisecting, so a zone that changed its offset
and changed it back within one day would be read as never changing (DST rules keep their changes months apart).
"""

from __future__ import annotations

import datetime as dt
import math
from bisect import bisect_left, bisect_right
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

FIELDS: Final = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
"""The fields of a 6-field expression, in the order they are written."""

ALIASES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""croniter's aliases, as the 5-field expressions they stand for."""

COUNT_CAP: Final = 1_000_000
"""Where `Cron.count` stops counting unless told otherwise."""

_DAY: Final = 86400
_UTC_NAMES: Final = frozenset({"UTC", "Etc/UTC"})
_HELP: Final = "write 5 fields (minute hour day-of-month month day-of-week), 6 with the seconds first, or @daily"


def to_croniter(expr: str) -> str:
    """`expr` in croniter's order: a 6-field expression's seconds moved from first to last; others unchanged."""
    parts = expr.split()
    if len(parts) == 6 and not expr.lstrip().startswith("@"):
        return " ".join([*parts[1:], parts[0]])
    return expr.strip()


def _fault(fields: list[str]) -> str:
    """Which field of an expression croniter refuses, named in the order it was written."""
    names = FIELDS if len(fields) == 6 else FIELDS[1:]
    for i, part in enumerate(fields):
        # Checking one field at a time, the others wild, names the culprit.
        probe = ["*"] * len(fields)
        probe[i] = part
        if not croniter.is_valid(to_croniter(" ".join(probe))):
            return f"{names[i]} field {part!r} is not valid; {_HELP}"
    return _HELP


class Cron:
    """One schedule's fire times: `Cron("0 30 2 * * *", "Europe/Berlin").next(now)`.

    Not thread-safe: `next` keeps the croniter it used last, positioned at the tick it returned, because a
    scheduler mostly asks for the tick after the one it just got, and stepping an existing croniter is much
    cheaper than building one (timeit on the 2-core dev box: `*/5 * * * *` 27 µs a step against 125-200 µs
    fresh, `30 2 * * *` 42 µs against 72 µs; a zone adds 1-5 µs). The answers are the same either way.
    """

    def __init__(self, expr: str, timezone: str | None = None) -> None:
        self.expr, self.timezone = expr, timezone
        written = expr.strip()
        if written.startswith("@") and written.lower() not in ALIASES:
            raise ValueError(f"unknown cron alias {written!r}: use one of {', '.join(ALIASES)}")
        fields = ALIASES.get(written.lower(), written).split()
        if len(fields) not in (5, 6):
            raise ValueError(f"cron expression {expr!r} has {len(fields)} fields: {_HELP}")
        seconds = fields[0] if len(fields) == 6 else "0"
        self._text = to_croniter(" ".join(fields))
        try:
            expanded, _ = croniter.expand(self._text)
        except ValueError:  # croniter's errors are ValueErrors
            raise ValueError(f"invalid cron expression {expr!r}: {_fault(fields)}") from None
        minute, hour, dom, month, dow = self._text.split()[:5]
        self.fixed: bool = not any(f.startswith("*") for f in (seconds, minute, hour))
        """Vixie cron's fixed-time job (no `*` leading the second, minute or hour field): DST never makes it
        fire twice or skip a day (see the module docstring)."""
        sets = (expanded[5] if len(expanded) == 6 else [0], expanded[0], expanded[1])
        self._s, self._m, self._h = (
            tuple(range(size)) if values == ["*"] else tuple(sorted(int(v) for v in values))
            for values, size in zip(sets, (60, 60, 24), strict=True)
        )
        self._per_day = len(self._s) * len(self._m) * len(self._h)
        self._days = None if (dom, month, dow) == ("*", "*", "*") else f"0 0 {dom} {month} {dow}"
        self._zone: ZoneInfo | None = None
        if timezone is not None and timezone not in _UTC_NAMES:
            try:
                self._zone = ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {timezone!r}: use an IANA name like 'Europe/Berlin'") from None
        self._iter: croniter | None = None
        self._wall = math.nan  # the wall-clock time `_iter` stands at

    def __repr__(self) -> str:
        return f"Cron({self.expr!r}, {self.timezone!r})"

    def next(self, after: float) -> float:
        """The first fire time strictly after `after`."""
        cur = math.floor(after)  # fire times are whole seconds: the first after `after` is the first after cur
        while True:
            if self._gap_tick(cur + 1):
                return float(cur + 1)
            offset = self._offset(cur + 1)
            tick = self._wall_next(cur + offset, after) - offset
            change = self._change(cur + 1, tick)
            if change is not None:  # the offset changes before that tick: go on from the change
                cur = change - 1
            elif self._repeat(tick):
                cur = tick
            else:
                return float(tick)

    def prev(self, at: float) -> float | None:
        """The last fire time at or before `at`; None when there is none."""
        cur = math.floor(at)
        while True:
            offset = self._offset(cur)
            try:
                wall = int(croniter(self._text, cur + offset + 1).get_prev(float))
            except (ValueError, OverflowError):  # croniter found none, or ran off datetime's calendar looking
                return None
            tick = wall - offset
            change = self._change(cur, tick)
            if change is not None:  # cur's offset began after that tick, at change + 1
                if self._gap_tick(change + 1):
                    return float(change + 1)
                cur = change
            elif self._repeat(tick):
                cur = tick - 1
            else:
                return float(tick)

    def count(self, after: float, upto: float, cap: int = COUNT_CAP) -> int:
        """How many fire times fall in (`after`, `upto`], up to `cap` (then it stops counting).

        Cheap over any range, so that a schedule down for a week or a year can say how many ticks it
        missed: arithmetic over the second/minute/hour sets, a croniter step per matching day when the day
        fields are not all `*`, and in a zone an offset lookup per day.
        """
        lo, hi = math.floor(after), math.floor(upto)
        n = 0
        while lo < hi and n < cap:
            offset = self._offset(lo + 1)
            change = self._change(lo + 1, hi)
            end = hi if change is None else change - 1  # (lo, end] keeps one offset
            n += self._wall_count(lo + offset, end + offset, cap - n)
            if self._gap_tick(lo + 1) and not self._wall_count(lo + offset, lo + 1 + offset, 1):
                n += 1
            if self._repeat(lo + 1):  # a fixed schedule does not fire again in the rest of the repeated hour
                repeats_end = min(end, self._repeats_end(lo + 1))
                n -= self._wall_count(lo + offset, repeats_end + offset, COUNT_CAP)
            lo = end
        return min(cap, n)

    def _wall_next(self, wall: int, after: float) -> int:
        """The first wall-clock fire time after `wall`, stepping on the kept croniter when it stands there."""
        it = self._iter if wall == self._wall else None
        if it is None:
            it = croniter(self._text, wall)
        try:
            self._wall = int(it.get_next(float))
        except CroniterBadDateError:
            raise ValueError(f"cron {self.expr!r} never fires after {self._show(after)}") from None
        self._iter = it
        return self._wall

    def _show(self, t: float) -> str:
        return dt.datetime.fromtimestamp(t, self._zone or dt.UTC).isoformat()

    def _offset(self, t: int) -> int:
        if self._zone is None:
            return 0
        offset = dt.datetime.fromtimestamp(t, self._zone).utcoffset()
        return int(offset.total_seconds()) if offset is not None else 0

    def _change(self, start: int, stop: int) -> int | None:
        """The first instant from `start` toward `stop` (either way; `stop` included) whose UTC offset is not
        `start`'s; None if there is none. Sampled a day apart, then bisected."""
        if self._zone is None or start == stop:
            return None
        step = _DAY if stop > start else -_DAY
        offset, near = self._offset(start), start
        while near != stop:
            far = min(near + step, stop) if step > 0 else max(near + step, stop)
            if self._offset(far) != offset:
                while abs(far - near) > 1:
                    mid = (near + far) // 2
                    near, far = (mid, far) if self._offset(mid) == offset else (near, mid)
                return far
            near = far
        return None

    def _gap_tick(self, t: int) -> bool:
        """Whether a fixed schedule fires at `t` for times that the spring-forward gap ending at `t` skipped."""
        if self._zone is None or not self.fixed:
            return False
        before, offset = self._offset(t - 1), self._offset(t)
        return offset > before and self._wall_count(t - 1 + before, t - 1 + offset, 1) > 0

    def _repeat(self, t: int) -> bool:
        """Whether `t` is the second pass of a wall-clock time repeated by a fall-back, for a fixed schedule."""
        if self._zone is None or not self.fixed:
            return False
        local = dt.datetime.fromtimestamp(t, self._zone)
        return bool(local.fold) and local.replace(fold=0).utcoffset() != local.utcoffset()

    def _repeats_end(self, t: int) -> int:
        """The last instant of the repeated wall-clock times that `t` is in."""
        near, far = t, t + _DAY
        while far - near > 1:
            mid = (near + far) // 2
            near, far = (mid, far) if self._repeat(mid) else (near, mid)
        return near

    def _wall_count(self, lo: int, hi: int, cap: int) -> int:
        """Matches in (lo, hi], both read as wall-clock seconds since 1970 (a day is always 86,400 s)."""
        if hi <= lo:
            return 0
        (day_lo, sec_lo), (day_hi, sec_hi) = divmod(lo, _DAY), divmod(hi, _DAY)
        if day_lo == day_hi:
            return self._upto(sec_hi) - self._upto(sec_lo) if self._matches(day_lo) else 0
        n = self._per_day - self._upto(sec_lo) if self._matches(day_lo) else 0
        n += self._matching_days(day_lo + 1, day_hi, cap // self._per_day + 1) * self._per_day
        return n + (self._upto(sec_hi) if self._matches(day_hi) else 0)

    def _upto(self, sec: int) -> int:
        """How many of a day's fire times are at or before `sec` seconds past midnight."""
        hour, rest = divmod(sec, 3600)
        minute, second = divmod(rest, 60)
        n = bisect_left(self._h, hour) * len(self._m) * len(self._s)
        if hour in self._h:
            n += bisect_left(self._m, minute) * len(self._s)
            if minute in self._m:
                n += bisect_right(self._s, second)
        return n

    def _matches(self, day: int) -> bool:
        if self._days is None:
            return True
        try:
            return bool(croniter(self._days, day * _DAY - 1).get_next(float) == day * _DAY)
        except CroniterBadDateError:
            return False

    def _matching_days(self, first: int, stop: int, most: int) -> int:
        """How many days in [first, stop) the day fields match, counting at most `most`."""
        if self._days is None:
            return max(0, min(stop - first, most))
        n, it = 0, croniter(self._days, first * _DAY - 1)
        try:
            while n < most and it.get_next(float) < stop * _DAY:
                n += 1
        except CroniterBadDateError:
            pass
        return n
