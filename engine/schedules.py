"""What `jd_schedules` holds for a workflow, when its clock triggers fire next, and how the pages show it. Pure.

A schedule is everything that starts a workflow's runs without anyone asking (its triggers); the
on/off switch is per workflow, kept in KV `jd_schedules` (engine/stores/schedules.py) beside the
scheduler's progress through each trigger's ticks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from jetdag.engine.cron import Cron
from jetdag.engine.model import Trigger, WorkflowSpec


@dataclass(frozen=True, slots=True)
class TriggerState:
    """The scheduler's progress through one trigger's ticks (or, for files, since when it watches)."""

    tick: float | None = None
    """The newest tick fired or passed over (epoch seconds): the scheduler goes on after it. None until the
    scheduler first sees the trigger."""
    fired: float | None = None
    """The newest tick that started runs."""
    runs: tuple[str, ...] = ()
    """The runs that tick started (several for a batch): what `overlap` looks at on the next tick."""
    buffered: float | None = None
    """A tick that `overlap: buffer_one` holds until those runs end."""
    skipped: int = 0
    """Ticks passed over in all: missed past their grace and not caught up, or skipped by `overlap`."""
    last_skip: str | None = None
    """Why ticks were last passed over, in words."""
    since: float | None = None
    """When a file trigger was first watched: files created before that are not new to it."""

    def to_dict(self) -> dict[str, Any]:
        d = {
            "tick": self.tick,
            "fired": self.fired,
            "runs": list(self.runs),
            "buffered": self.buffered,
            "skipped": self.skipped,
            "last_skip": self.last_skip,
            "since": self.since,
        }
        return {k: v for k, v in d.items() if v not in (None, [], 0)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TriggerState:
        def num(key: str) -> float | None:
            value = d.get(key)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        runs = d.get("runs")
        skipped = d.get("skipped")
        return cls(
            tick=num("tick"),
            fired=num("fired"),
            runs=tuple(str(r) for r in runs) if isinstance(runs, list | tuple) else (),
            buffered=num("buffered"),
            skipped=skipped if isinstance(skipped, int) and not isinstance(skipped, bool) else 0,
            last_skip=str(d["last_skip"]) if d.get("last_skip") else None,
            since=num("since"),
        )


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What `jd_schedules` holds for one workflow; a workflow with no entry is on and has fired nothing."""

    enabled: bool = True
    changed_by: str = ""
    changed_at: float | None = None
    """When the switch last changed: while on, ticks up to this moment belong to the time it was off."""
    triggers: Mapping[str, TriggerState] = field(default_factory=dict)
    """Per trigger key (`Trigger.key`): the scheduler's progress."""

    @property
    def last_fire(self) -> float | None:
        """When any of its triggers last started runs (the tick's time)."""
        fires = [t.fired for t in self.triggers.values() if t.fired is not None]
        return max(fires) if fires else None

    def trigger(self, key: str) -> TriggerState:
        return self.triggers.get(key) or TriggerState()

    def with_trigger(self, key: str, state: TriggerState) -> ScheduleState:
        return replace(self, triggers={**self.triggers, key: state})

    def to_dict(self) -> dict[str, object]:
        return {
            "v": 1,
            "enabled": self.enabled,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
            "last_fire": self.last_fire,  # for readers in other languages; derived, never read back
            "triggers": {k: t.to_dict() for k, t in self.triggers.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> ScheduleState:
        changed = d.get("changed_at")
        triggers = d.get("triggers")
        return cls(
            enabled=bool(d.get("enabled", True)),
            changed_by=str(d.get("changed_by") or ""),
            changed_at=float(changed) if isinstance(changed, int | float) else None,
            triggers={str(k): TriggerState.from_dict(v) for k, v in triggers.items() if isinstance(v, Mapping)}
            if isinstance(triggers, Mapping)
            else {},
        )


def next_fire(trigger: Trigger, after: dt.datetime) -> dt.datetime | None:
    """The first time after `after` that a cron trigger fires, in its time zone (UTC without one); None
    for a trigger that is not a clock. `after` must be aware."""
    if not trigger.cron:
        return None
    tick = Cron(trigger.cron, trigger.timezone).next(after.timestamp())
    return dt.datetime.fromtimestamp(tick, ZoneInfo(trigger.timezone) if trigger.timezone else dt.UTC)


def next_fires(spec: WorkflowSpec, after: dt.datetime) -> dt.datetime | None:
    """The soonest next fire of any of the workflow's clock triggers; None when it has none."""
    fires = [f for t in spec.triggers if (f := next_fire(t, after)) is not None]
    return min(fires, key=lambda f: f.timestamp()) if fires else None


def has_schedule(spec: WorkflowSpec) -> bool:
    """Whether anything but a person starts its runs: a cron, file or message trigger."""
    return any(t.cron or t.files or t.subject for t in spec.triggers)


def trigger_kinds(trigger: Trigger) -> list[str]:
    """The ways a trigger fires: "cron", "files", "message" (a flowlord phase may have a cron and files)."""
    return [kind for kind, on in (("cron", trigger.cron), ("files", trigger.files), ("message", trigger.subject)) if on]


def schedule_view(spec: WorkflowSpec, state: ScheduleState, now: dt.datetime) -> dict[str, object]:
    """`{"workflow", "scheduled", "enabled", "next_fire", "last_fire", "changed_by", "changed_at", "triggers"}`: what
    the API and the pages show; `next_fire` (ISO 8601) only while on, and only for a clock. `triggers` lists
    each way it fires: `{"key", "kind", "what", "timezone", "next_fire", "last_fire", "runs", "buffered",
    "skipped", "last_skip"}`."""
    fire = next_fires(spec, now) if state.enabled else None
    triggers: list[dict[str, object]] = []
    for trigger in spec.triggers:
        for kind in trigger_kinds(trigger):
            key = trigger.key(kind)
            progress = state.trigger(key)
            what = trigger.cron if kind == "cron" else ", ".join(trigger.files) if kind == "files" else trigger.subject
            own = next_fire(trigger, now) if kind == "cron" and state.enabled else None
            triggers.append(
                {
                    "key": key,
                    "kind": kind,
                    "what": what,
                    "timezone": trigger.timezone if kind == "cron" else None,
                    "catchup": trigger.catchup.value if kind == "cron" else None,
                    "overlap": trigger.overlap.value if kind == "cron" else None,
                    "next_fire": own.isoformat() if own else None,
                    "last_fire": progress.fired,
                    "runs": list(progress.runs),
                    "buffered": progress.buffered,
                    "skipped": progress.skipped,
                    "last_skip": progress.last_skip,
                }
            )
    return {
        "workflow": spec.name,
        "scheduled": has_schedule(spec),
        "enabled": state.enabled,
        "next_fire": fire.isoformat() if fire else None,
        "last_fire": state.last_fire,
        "changed_by": state.changed_by or None,
        "changed_at": state.changed_at,
        "triggers": triggers,
    }
