"""Next fire times and the schedule view: pure, no NATS."""

from __future__ import annotations

import datetime as dt

from jetdag.engine.model import TaskSpec, Trigger, WorkflowSpec
from jetdag.engine.schedules import ScheduleState, TriggerState, has_schedule, next_fire, next_fires, schedule_view

NOON_UTC = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def test_a_cron_fires_next_in_its_time_zone() -> None:
    nightly = Trigger(cron="0 2 * * *", timezone="Europe/Berlin")
    fire = next_fire(nightly, NOON_UTC)
    assert fire is not None and fire.isoformat() == "2026-11-24T02:00:00+01:00"
    assert next_fire(Trigger(cron="*/15 * * * *"), NOON_UTC) == NOON_UTC + dt.timedelta(minutes=15)


def test_only_clocks_fire_and_the_soonest_clock_wins() -> None:
    assert next_fire(Trigger(files=("/in/*.csv",)), NOON_UTC) is None
    spec = WorkflowSpec(
        "w",
        (TaskSpec("a", "noop"),),
        triggers=(Trigger(cron="0 0 * * *"), Trigger(cron="30 12 * * *"), Trigger(subject="in.x")),
    )
    assert next_fires(spec, NOON_UTC) == NOON_UTC + dt.timedelta(minutes=30)
    assert has_schedule(spec)
    assert not has_schedule(WorkflowSpec("m", (TaskSpec("a", "noop"),)))


def test_a_schedule_that_is_off_has_no_next_fire() -> None:
    spec = WorkflowSpec("w", (TaskSpec("a", "noop"),), triggers=(Trigger(cron="0 * * * *"),))
    on = schedule_view(spec, ScheduleState(), NOON_UTC)
    assert on["enabled"] is True and on["next_fire"] == "2026-11-23T13:00:00+00:00"
    off = schedule_view(spec, ScheduleState(enabled=False, changed_by="ops"), NOON_UTC)
    assert off["enabled"] is False and off["next_fire"] is None and off["changed_by"] == "ops"


def test_the_state_survives_its_map() -> None:
    progress = TriggerState(tick=3.0, fired=1.5, runs=("R1", "R2"), buffered=4.0, skipped=2, last_skip="why", since=0.5)
    state = ScheduleState(enabled=False, changed_by="me", changed_at=2.0, triggers={"cron": progress})
    assert ScheduleState.from_dict(state.to_dict()) == state
    assert state.to_dict()["last_fire"] == state.last_fire == 1.5
    assert ScheduleState.from_dict({}) == ScheduleState()
    assert ScheduleState().trigger("cron") == TriggerState()
