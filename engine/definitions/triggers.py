"""The fields that say what starts runs (a schedule, file globs, a message subject) and how a schedule behaves
when ticks are missed or runs overlap: the checks every format shares, and the warning a valid cron can still
deserve.

A 6-field cron has its seconds first in every format (engine/cron.py says why); an expression is kept as
written, so the model, `jetdag` listings and an export show what the user wrote.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from jetdag.engine.cron import FIELDS, Cron, to_croniter
from jetdag.engine.definitions.checks import BadValue, WrongValue, as_duration, as_str, did_you_mean
from jetdag.engine.globs import check_pattern
from jetdag.engine.model import Catchup, Overlap, Trigger
from jetdag.engine.subjects import RESERVED_PREFIXES

DEFAULT: Final = Trigger()
"""A trigger with every field at its default: what a field that is not written gives."""

_CRON_HELP: Final = "use 5 fields (minute hour day-of-month month day-of-week), 6 with the seconds first, or @daily"


_NEVER_PROBE = 1_767_225_600.0
"""2026-01-01T00:00Z: a cron with no fire time after it (February 30) has none at all."""


def as_cron(value: object) -> str:
    """A cron expression as written (stripped): 5 fields, 6 with the seconds first, or an alias like @daily.
    When it is not valid, the message names the faulty field."""
    text = as_str(value).strip()
    parts = text.split()
    if text.startswith("@") or len(parts) not in (5, 6):
        if text.startswith("@") and croniter.is_valid(text):
            return text
        raise BadValue(f"invalid cron expression {text!r}: {_CRON_HELP}")
    names = FIELDS[len(FIELDS) - len(parts) :]
    for i, part in enumerate(parts):
        # Checking one field at a time, the others wild, lets the message name the culprit.
        probe = ["*"] * len(parts)
        probe[i] = part
        if not croniter.is_valid(to_croniter(" ".join(probe))):
            raise BadValue(f"invalid cron expression {text!r}: {names[i]} field {part!r} is not valid")
    if not croniter.is_valid(to_croniter(text)):
        raise BadValue(f"invalid cron expression {text!r}: {_CRON_HELP}")
    try:
        Cron(text).next(_NEVER_PROBE)
    except ValueError:
        raise BadValue(f"cron expression {text!r} never fires (no such date, like February 30)") from None
    return text


def as_catchup(value: object) -> Catchup:
    """`none`, `latest` or `all`; FlowCtl's booleans too: true catches up every missed tick, false none."""
    if isinstance(value, bool):
        return Catchup.ALL if value else Catchup.NONE
    if isinstance(value, str) and value in Catchup._value2member_map_:
        return Catchup(value)
    hint = did_you_mean(value, [c.value for c in Catchup]) if isinstance(value, str) else ""
    raise WrongValue("none, latest or all (or true for all, false for none)", value, hint)


def as_catchup_window(value: object) -> float:
    """A duration above zero: how far back `catchup: all` looks for missed ticks."""
    seconds = as_duration(value)
    if seconds <= 0 or not math.isfinite(seconds):
        raise WrongValue("a duration above zero, like '6h' or '7d'", value)
    return seconds


def as_overlap(value: object) -> Overlap:
    if isinstance(value, str) and value in Overlap._value2member_map_:
        return Overlap(value)
    hint = did_you_mean(value, [o.value for o in Overlap]) if isinstance(value, str) else ""
    raise WrongValue("one of " + ", ".join(Overlap), value, hint)


def as_timezone(value: object) -> str:
    text = as_str(value)
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadValue(f"unknown time zone {text!r}: use an IANA name like 'UTC' or 'Europe/Paris'") from None
    return text


def as_globs(value: object) -> tuple[str, ...]:
    """A file pattern or a list of them, each as engine/globs.py matches it (Go's filepath.Match: no `**`)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i.strip() for i in items):
        raise WrongValue("a glob or a list of globs", value)
    for item in items:
        problem = check_pattern(item)
        if problem is not None:
            raise BadValue(problem if repr(item) in problem else f"{item!r}: {problem}")
    return tuple(items)


def as_subject(value: object) -> str:
    """A NATS subject to listen on; `*` and a final `>` are wildcards. jetdag's and NATS's own subjects are
    refused: a trigger there would start runs from jetdag's traffic, and its stream would clash with jetdag's."""
    text = as_str(value)
    tokens = text.split(".")
    if not all(t and not any(c.isspace() for c in t) for t in tokens) or ">" in tokens[:-1]:
        raise BadValue(
            f"invalid NATS subject {text!r}: use dot-separated tokens like 'orders.created', "
            "with '*' or a final '>' as wildcards"
        )
    reserved = ", ".join(f"'{p}…'" for p in RESERVED_PREFIXES)
    prefix = next((p for p in RESERVED_PREFIXES if text.startswith(p)), None)
    if prefix is not None:
        raise BadValue(
            f"subject {text!r} is under {prefix!r}, which jetdag and NATS keep for their own traffic ({reserved}): "
            "listen on a subject of your own, like 'orders.created'"
        )
    if tokens[0] in ("*", ">"):
        raise BadValue(
            f"subject {text!r} starts with a wildcard, so it would also match jetdag's and NATS's own subjects "
            f"({reserved}): start it with a token of your own, like 'orders.*'"
        )
    return text


def workflow_triggers(
    schedule: str | None,
    files: tuple[str, ...],
    on_message: str | None,
    offset: float,
    *,
    timezone: str | None = DEFAULT.timezone,
    catchup: Catchup = DEFAULT.catchup,
    catchup_window: float = DEFAULT.catchup_window,
    overlap: Overlap = DEFAULT.overlap,
) -> tuple[Trigger, ...]:
    """The triggers a YAML or Python workflow declares with its top-level fields; the keyword ones are the
    schedule's."""
    out: list[Trigger] = []
    if schedule:
        clock = Trigger(
            cron=schedule,
            timezone=timezone,
            catchup=catchup,
            catchup_window=catchup_window,
            overlap=overlap,
            offset=offset,
        )
        out.append(clock)
    if files:
        out.append(Trigger(files=files, offset=offset))
    if on_message:
        out.append(Trigger(subject=on_message, offset=offset))
    return tuple(out)


_FROM: Final = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""Where both readings of a 6-field cron are compared: any fixed time would do, a fixed one keeps the message
the same from run to run."""
_COMPARED: Final = 5
_SHOWN: Final = 3


def cron_warning(expr: str) -> str | None:
    """Why a valid 6-field cron may not mean what its author thinks, or None.

    jetdag's YAML once read the seconds last, as croniter does; an expression that is valid in both orders and
    fires at other times in the other one was most likely written for it, so it is worth a word (and a way to
    keep either meaning). Expressions that fire alike, or are invalid seconds-last, get none.
    """
    parts = expr.split()
    if len(parts) != 6 or expr.startswith("@") or not croniter.is_valid(expr):
        return None
    ours, theirs = _fires(to_croniter(expr)), _fires(expr)
    if ours is None or theirs is None or ours == theirs:
        return None
    theirs_rewritten = " ".join([parts[5], *parts[:5]])
    # At second 0, five fields say the same without the ambiguity; other seconds need six.
    fix = f"write {' '.join(parts[1:])!r} (5 fields) to keep jetdag's reading, or " if parts[0] == "0" else "write "
    return (
        f"{expr!r} has 6 fields: jetdag reads the seconds first and fires it at {_times(ours)}; read with the "
        f"seconds last, as croniter writes it, it would fire at {_times(theirs)}: {fix}{theirs_rewritten!r} "
        "for the seconds-last reading"
    )


def _fires(expr: str) -> list[dt.datetime] | None:
    """The first fire times of `expr` (croniter's order) from _FROM on, or None when croniter finds none."""
    try:
        ticks = croniter(expr, _FROM - dt.timedelta(seconds=1))  # fires at _FROM itself count
        return [ticks.get_next(dt.datetime) for _ in range(_COMPARED)]
    except (CroniterError, ValueError):
        return None


def _times(fires: list[dt.datetime]) -> str:
    """`2026-01-01 00:00:00, 00:00:01, …`: the date only where it changes, so the eye sees the step."""
    shown: list[str] = []
    for i, fire in enumerate(fires[:_SHOWN]):
        same_day = i > 0 and fire.date() == fires[i - 1].date()
        shown.append(fire.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S"))
    return ", ".join([*shown, "…"])
