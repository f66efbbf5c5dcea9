"""Which ticks a cron trigger fires after a pause, and the ticks of backfills and flowlord batches."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetdag.engine.cron import Cron
from jetdag.engine.errors import BackfillTooLarge, JetdagError
from jetdag.engine.model import BatchBy, Catchup
from jetdag.engine.ticks import Plan, backfill, grace, plan, steps

HOUR, DAY, WEEK = 3600, 86400, 7 * 86400


def at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


NOON = at("2026-11-23T12:00+00:00")


@pytest.mark.parametrize(
    ("period", "allowed"), [(0.5, 2.0), (1, 2.0), (2, 2.0), (15, 15.0), (60, 60.0), (HOUR, 60.0), (DAY, 60.0)]
)
def test_grace_follows_the_period_between_2_and_60_seconds(period: float, allowed: float) -> None:
    assert grace(period) == allowed


def test_nothing_due_leaves_the_cursor() -> None:
    assert plan(Cron("@hourly"), Catchup.ALL, DAY, NOON, NOON + 1800) == Plan((), NOON)
    assert plan(Cron("@hourly"), Catchup.ALL, DAY, NOON, NOON) == Plan((), NOON)
    assert plan(Cron("@hourly"), Catchup.ALL, DAY, NOON + HOUR, NOON) == Plan((), NOON + HOUR)  # a clock behind


@pytest.mark.parametrize("catchup", list(Catchup))
@pytest.mark.parametrize("late", [0.0, 0.5, 6.0, 59.0, 60.0])
def test_a_tick_delayed_by_a_restart_or_failover_fires_under_every_policy(catchup: Catchup, late: float) -> None:
    assert plan(Cron("@hourly"), catchup, DAY, NOON - HOUR, NOON + late) == Plan((NOON,), NOON)


def test_a_tick_later_than_its_grace_is_missed() -> None:
    assert plan(Cron("@hourly"), Catchup.NONE, DAY, NOON - HOUR, NOON + 61) == Plan((), NOON, 1, NOON, NOON)
    every_second = Cron("* * * * * *")
    assert plan(every_second, Catchup.NONE, DAY, NOON - 1, NOON + 2) == Plan((NOON, NOON + 1, NOON + 2), NOON + 2)
    got = plan(every_second, Catchup.NONE, DAY, NOON - 1, NOON + 3)
    assert got == Plan((NOON + 1, NOON + 2, NOON + 3), NOON + 3, 1, NOON, NOON)


@pytest.mark.parametrize(
    ("catchup", "fired", "skipped"),
    [(Catchup.NONE, (), 3), (Catchup.LATEST, (NOON,), 2), (Catchup.ALL, (NOON - 2 * HOUR, NOON - HOUR, NOON), 0)],
)
def test_a_restart_after_three_missed_hourly_ticks(catchup: Catchup, fired: tuple[float, ...], skipped: int) -> None:
    # Down from just after 09:00 to 12:30: 10:00, 11:00 and 12:00 are missed.
    got = plan(Cron("@hourly"), catchup, DAY, NOON - 3 * HOUR, NOON + 1800)
    assert got.fire == fired
    assert got.cursor == NOON
    assert got.skipped == skipped
    if skipped:
        assert (got.skipped_from, got.skipped_to) == (NOON - 2 * HOUR, NOON - 2 * HOUR + (skipped - 1) * HOUR)


@pytest.mark.parametrize("catchup", [Catchup.NONE, Catchup.LATEST])
def test_an_every_second_schedule_down_for_a_week_fires_only_what_is_on_time(catchup: Catchup) -> None:
    started = time.perf_counter()
    got = plan(Cron("* * * * * *"), catchup, DAY, NOON - WEEK, NOON + 0.5)
    assert time.perf_counter() - started < 0.5  # jumps and arithmetic, not 604,800 steps
    assert got == Plan((NOON - 1, NOON), NOON, WEEK - 2, NOON - WEEK + 1, NOON - 2)


def test_catchup_all_after_a_week_fires_the_oldest_of_the_window_up_to_the_limit() -> None:
    started = time.perf_counter()
    got = plan(Cron("* * * * * *"), Catchup.ALL, HOUR, NOON - WEEK, NOON + 0.5)
    assert time.perf_counter() - started < 0.5
    assert got.fire == tuple(NOON - HOUR + 1 + i for i in range(1000))  # the window starts at 11:00:00.5
    assert got.cursor == NOON - HOUR + 1000
    assert (got.skipped, got.skipped_from, got.skipped_to) == (WEEK - HOUR, NOON - WEEK + 1, NOON - HOUR)


def test_catchup_all_passes_over_ticks_older_than_the_window() -> None:
    got = plan(Cron("@hourly"), Catchup.ALL, 3 * HOUR, NOON - 10 * HOUR, NOON + 1800)
    assert got == Plan((NOON - 2 * HOUR, NOON - HOUR, NOON), NOON, 7, NOON - 9 * HOUR, NOON - 3 * HOUR)


def test_the_limit_spreads_a_catchup_over_plans_without_losing_a_tick() -> None:
    minutely, cursor, now = Cron("* * * * *"), NOON - 100 * 60, NOON + 10
    fired: list[float] = []
    sizes = []
    while (got := plan(minutely, Catchup.ALL, DAY, cursor, now, limit=30)).fire:
        assert got.skipped == 0
        fired += got.fire
        sizes.append(len(got.fire))
        cursor = got.cursor
    assert sizes == [30, 30, 30, 10]
    assert fired == [NOON - (99 - i) * 60 for i in range(100)]
    assert cursor == NOON


def test_latest_fires_the_newest_missed_tick_unless_one_on_time_supersedes_it() -> None:
    minutely = Cron("* * * * *")
    on_time = plan(minutely, Catchup.LATEST, DAY, NOON - 600, NOON + 5)
    assert on_time == Plan((NOON,), NOON, 9, NOON - 540, NOON - 60)
    all_late = plan(Cron("*/5 * * * *"), Catchup.LATEST, DAY, NOON - 1800, NOON + 90)
    assert all_late == Plan((NOON,), NOON, 5, NOON - 1500, NOON - 300)
    long_ago = plan(Cron("@daily"), Catchup.LATEST, DAY, NOON - 3 * DAY, NOON)
    midnight = NOON - 12 * HOUR
    assert long_ago == Plan((midnight,), midnight, 2, midnight - 2 * DAY, midnight - DAY)


def test_plan_refuses_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        plan(Cron("@hourly"), Catchup.ALL, DAY, NOON - HOUR, NOON, limit=0)


def _expected(cron: Cron, catchup: Catchup, window: float, cursor: float, now: float, limit: int) -> Plan:
    """`plan` by brute force: every due tick stepped through and judged one by one."""
    due, tick = [], cron.next(cursor)
    while tick <= now:
        due.append(tick)
        tick = cron.next(tick)
    if not due:
        return Plan((), cursor)
    on_time = [t for t, after in zip(due, [*due[1:], tick], strict=True) if now - t <= grace(after - t)]
    if catchup is Catchup.ALL:
        fire = [t for t in due if t in on_time or t >= now - window]
    elif catchup is Catchup.LATEST and not on_time:
        fire = [due[-1]]
    else:
        fire = on_time
    fire, newest = (fire[:limit], fire[limit - 1]) if len(fire) > limit else (fire, due[-1])
    passed = [t for t in due if t <= newest and t not in fire]
    if not passed:
        return Plan(tuple(fire), newest)
    return Plan(tuple(fire), newest, len(passed), passed[0], passed[-1])


# (expression, zone, how long a pause may last): long enough to cross several ticks, short enough to step.
SCHEDULES = [
    ("@hourly", None, 3 * DAY),
    ("*/30 * * * *", "Europe/Berlin", 3 * DAY),
    ("30 2 * * *", "Europe/Berlin", 9 * DAY),
    ("* * * * *", "America/New_York", 6 * HOUR),
    ("*/15 * * * * *", None, HOUR),
    ("* * * * * *", None, 600),
    ("0,50,52 * * * * *", None, 600),
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SCHEDULES),
    st.sampled_from(list(Catchup)),
    st.integers(0, 2 * DAY),
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(1, 40),
    st.integers(int(at("2026-10-23T00:00+00:00")), int(at("2026-10-27T00:00+00:00"))),
)
def test_plan_matches_judging_every_due_tick(
    schedule: tuple[str, str | None, int],
    catchup: Catchup,
    window: int,
    down: float,
    late: float,
    limit: int,
    origin: int,
) -> None:
    expr, timezone, span = schedule
    cron = Cron(expr, timezone)
    cursor = cron.prev(origin)
    assert cursor is not None
    now = cursor + down * span + late * 120
    assert plan(cron, catchup, window, cursor, now, limit=limit) == _expected(
        Cron(expr, timezone), catchup, window, cursor, now, limit
    )


def test_a_backfill_lists_the_cron_ticks_with_both_ends_included() -> None:
    start, end = at("2026-11-01T00:00+00:00"), at("2026-11-02T23:00+00:00")
    ticks = backfill(Cron("@hourly"), None, start, end)
    assert len(ticks) == 48
    assert (ticks[0], ticks[-1]) == (start, end)
    assert backfill(Cron("@hourly"), None, start + 1, end - 1) == ticks[1:-1]
    assert backfill(Cron("@hourly"), None, end, start) == []


def test_a_backfill_keeps_the_dst_rules_of_the_cron() -> None:
    nightly = Cron("30 2 * * *", "Europe/Berlin")
    ticks = backfill(nightly, None, at("2026-10-24T00:00+02:00"), at("2026-10-26T23:00+01:00"))
    assert ticks == [at("2026-10-24T02:30+02:00"), at("2026-10-25T02:30+02:00"), at("2026-10-26T02:30+01:00")]


@pytest.mark.parametrize(
    ("by", "start", "end", "ticks"),
    [
        (BatchBy.DAY, "2026-11-01T06:00", "2026-11-04T06:00",
         ["2026-11-01T06:00", "2026-11-02T06:00", "2026-11-03T06:00", "2026-11-04T06:00"]),
        (BatchBy.HOUR, "2026-11-01T22:00", "2026-11-02T00:59",
         ["2026-11-01T22:00", "2026-11-01T23:00", "2026-11-02T00:00"]),
        (BatchBy.MONTH, "2026-01-31T00:00", "2026-06-30T00:00",
         ["2026-01-31T00:00", "2026-02-28T00:00", "2026-03-31T00:00", "2026-04-30T00:00", "2026-05-31T00:00",
          "2026-06-30T00:00"]),
        (BatchBy.MONTH, "2027-11-30T12:00", "2028-03-01T00:00",
         ["2027-11-30T12:00", "2027-12-30T12:00", "2028-01-30T12:00", "2028-02-29T12:00"]),
        (BatchBy.DAY, "2026-11-02T00:00", "2026-11-01T00:00", []),
    ],
)  # fmt: skip
def test_a_backfill_by_calendar_steps(by: BatchBy, start: str, end: str, ticks: list[str]) -> None:
    got = backfill(None, by, at(start + "+00:00"), at(end + "+00:00"))
    assert got == [at(t + "+00:00") for t in ticks]


def test_a_backfill_too_large_says_how_large_and_what_to_do() -> None:
    year = (at("2026-01-01T00:00+00:00"), at("2026-12-31T23:00+00:00"))
    with pytest.raises(BackfillTooLarge, match=r"8,760 ticks, more than the limit of 1,000: .*shorter range.*coarser"):
        backfill(Cron("@hourly"), None, *year, limit=1000)
    with pytest.raises(BackfillTooLarge, match="8,760 ticks") as raised:
        backfill(None, BatchBy.HOUR, *year, limit=1000)
    assert isinstance(raised.value, JetdagError)
    assert (raised.value.count, raised.value.limit) == (8760, 1000)
    assert len(backfill(None, BatchBy.DAY, *year, limit=1000)) == 365


def test_a_backfill_needs_a_cron_or_a_step() -> None:
    with pytest.raises(ValueError, match="needs a cron schedule or a step"):
        backfill(None, None, NOON - DAY, NOON)


def test_flowlord_for_minus_168h_by_day_gives_8_days_oldest_first() -> None:
    # flowlord's README: `for=-168h&by=day` "generates 8 tasks from today to 7 days ago".
    assert steps(NOON, -168 * HOUR, BatchBy.DAY) == [NOON - (7 - i) * DAY for i in range(8)]


@pytest.mark.parametrize(
    ("origin", "span", "by", "times"),
    [
        ("2026-11-23T12:00", 3 * HOUR, BatchBy.HOUR,
         ["2026-11-23T12:00", "2026-11-23T13:00", "2026-11-23T14:00", "2026-11-23T15:00"]),
        ("2026-11-23T12:00", -2.5 * HOUR, BatchBy.HOUR, ["2026-11-23T10:00", "2026-11-23T11:00", "2026-11-23T12:00"]),
        ("2026-11-23T12:00", 2 * DAY, BatchBy.DAY, ["2026-11-23T12:00", "2026-11-24T12:00", "2026-11-25T12:00"]),
        ("2026-11-23T12:00", 0, BatchBy.DAY, ["2026-11-23T12:00"]),
        ("2026-01-31T00:00", 120 * DAY, BatchBy.MONTH,
         ["2026-01-31T00:00", "2026-02-28T00:00", "2026-03-31T00:00", "2026-04-30T00:00", "2026-05-31T00:00"]),
        ("2026-03-31T00:00", -62 * DAY, BatchBy.MONTH, ["2026-01-31T00:00", "2026-02-28T00:00", "2026-03-31T00:00"]),
        ("2026-03-31T00:00", -59 * DAY, BatchBy.MONTH, ["2026-01-31T00:00", "2026-02-28T00:00", "2026-03-31T00:00"]),
        ("2026-03-31T00:00", -58 * DAY, BatchBy.MONTH, ["2026-02-28T00:00", "2026-03-31T00:00"]),
    ],
)  # fmt: skip
def test_steps_go_by_calendar_hours_days_and_months(origin: str, span: float, by: BatchBy, times: list[str]) -> None:
    assert steps(at(origin + "+00:00"), span, by) == [at(t + "+00:00") for t in times]
