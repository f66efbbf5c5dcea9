"""When a workflow's clock triggers fire next, and whether its schedule is on: pure, for the pages and the scheduler.

A schedule is everything that starts a workflow's runs without anyone asking (its triggers); the
on/off switch is per workflow, kept in KV `jd_schedules` (engine/stores/schedules.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from croniter import croniter

from jetdag.engine.model import Trigger, WorkflowSpec


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What `jd_schedules` holds for one workflow; a workflow with no entry is on."""

    enabled: bool = True
    last_fire: float | None = None
    """When the scheduler last fired it (epoch seconds); the scheduler's compare-and-set token."""
    changed_by: str = ""
    changed_at: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"v": 1, "enabled": self.enabled, "last_fire": self.last_fire, "changed_by": self.changed_by,
                "changed_at": self.changed_at}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ScheduleState:
        last, changed = d.get("last_fire"), d.get("changed_at")
        return cls(
            enabled=bool(d.get("enabled", True)),
            last_fire=float(last) if isinstance(last, int | float) else None,
            changed_by=str(d.get("changed_by") or ""),
            changed_at=float(changed) if isinstance(changed, int | float) else None,
        )


def next_fire(trigger: Trigger, after: dt.datetime) -> dt.datetime | None:
    """The first time after `after` that a cron trigger fires, in its time zone (UTC without one); None
    for a trigger that is not a clock. `after` must be aware."""
    if not trigger.cron:
        return None
    zone = ZoneInfo(trigger.timezone) if trigger.timezone else dt.UTC
    fire: dt.datetime = croniter(trigger.cron, after.astimezone(zone)).get_next(dt.datetime)
    return fire


def next_fires(spec: WorkflowSpec, after: dt.datetime) -> dt.datetime | None:
    """The soonest next fire of any of the workflow's clock triggers; None when it has none."""
    fires = [f for t in spec.triggers if (f := next_fire(t, after)) is not None]
    return min(fires, key=lambda f: f.timestamp()) if fires else None


def has_schedule(spec: WorkflowSpec) -> bool:
    """Whether anything but a person starts its runs: a cron, file or message trigger."""
    return any(t.cron or t.files or t.subject for t in spec.triggers)


def schedule_view(spec: WorkflowSpec, state: ScheduleState, now: dt.datetime) -> dict[str, object]:
    """`{"workflow", "scheduled", "enabled", "next_fire", "last_fire", "changed_by", "changed_at"}`: what
    the API and the pages show; `next_fire` (ISO 8601) only while on, and only for a clock."""
    fire = next_fires(spec, now) if state.enabled else None
    return {
        "workflow": spec.name,
        "scheduled": has_schedule(spec),
        "enabled": state.enabled,
        "next_fire": fire.isoformat() if fire else None,
        "last_fire": state.last_fire,
        "changed_by": state.changed_by or None,
        "changed_at": state.changed_at,
    }
