"""What a trigger starts when it fires: the run submissions, with ids fixed by what fired. Pure, but for reading
a batch's meta-file through the `read` callable it is given.

A run started by a trigger has an id derived from the workflow, the trigger's key, the moment that fired
(a cron tick, a file's mtime, a message's time) and what makes that firing unique (the file's path and size,
the message's stream sequence), and the batch item. Whoever fires it, however often (two engines racing, a
retry after a crash, a backfill over ticks the scheduler already fired), it is the same run: JetStream drops
the repeated submission inside its duplicate window, and the run actor ignores one for a run that exists.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from jetdag.engine import ticks
from jetdag.engine.cron import Cron
from jetdag.engine.errors import BackfillTooLarge, JetdagError
from jetdag.engine.events import RunSubmitted
from jetdag.engine.ids import derived_run_id
from jetdag.engine.model import Batch, BatchBy, Trigger, WorkflowSpec

Reader = Callable[[str], bytes]
"""Reads a batch's meta-file by the path the rule gives; raises OSError."""


@dataclass(frozen=True, slots=True)
class Firing:
    """One firing of a trigger."""

    trigger: Trigger
    key: str
    """The trigger's key for this kind of firing (`Trigger.key`), or "backfill" for a workflow without one."""
    moment: float
    """When it fired, as run ids carry it: the tick, the file's mtime, the message's time (epoch seconds)."""
    logical_time: float
    """The time the templates render, before the trigger's offset: the tick, the path's date, the message time."""
    identity: tuple[object, ...] = ()
    """What tells this firing from another one at the same moment: (path, size) of a file, a message's sequence."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """`{meta:key}` values: the file's, the message headers', a backfill's `-m`."""
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    """What the runs record as their trigger (RunSubmitted.trigger); default the key."""


def fire_id(workflow: str, firing: Firing, item: int = 0) -> str:
    """The id of item `item` of `firing`'s runs (time-ordered by the moment, like every run id)."""
    return derived_run_id(int(firing.moment * 1000), workflow, firing.key, repr(firing.moment), *firing.identity, item)


def submissions(
    spec: WorkflowSpec, revision: int, firing: Firing, now: float, read: Reader | None = None
) -> list[RunSubmitted]:
    """The runs `firing` starts: one, or one per batch item (flowlord's `for`/`meta`/`meta-file`), oldest first.

    A batch that cannot be expanded (its meta-file is missing or not a table) gives one run that fails at
    once with the reason, so the firing is on record rather than lost in a log."""
    trigger = firing.trigger
    origin = firing.logical_time + trigger.offset
    start = list(trigger.start) or None
    source = firing.source or firing.key

    def submitted(item: int, logical_time: float, meta: Mapping[str, Any], error: str | None = None) -> RunSubmitted:
        return RunSubmitted(
            fire_id(spec.name, firing, item), spec.name, revision, dict(firing.params), now,
            logical_time=logical_time, meta=dict(meta) or None, start=start, trigger=source, error=error,
        )  # fmt: skip

    if trigger.batch is None:
        return [submitted(0, origin, firing.meta)]
    try:
        items = batch_items(trigger.batch, origin, read)
    except BatchError as exc:
        return [submitted(0, origin, firing.meta, error=str(exc))]
    return [submitted(i, moment, {**firing.meta, **meta}) for i, (moment, meta) in enumerate(items)]


MAX_BATCH = 10_000
"""Runs one firing may start: a batch of more is refused (its run fails saying so), not started by the million."""

_SHORTEST = {BatchBy.HOUR: 3600.0, BatchBy.DAY: 86400.0, BatchBy.MONTH: 28 * 86400.0}


class BatchError(Exception):
    """A batch that cannot be expanded; the message says why, naming the file."""


def batch_items(batch: Batch, origin: float, read: Reader | None) -> list[tuple[float, dict[str, Any]]]:
    """(logical time, meta) per item: every step of `for`/`by` from `origin`, times every meta row (the
    zipped `meta` lists, or the rows of `meta-file`); a batch with only one of the two varies only it."""
    if batch.span is not None and abs(batch.span) / _SHORTEST[batch.by] >= MAX_BATCH:
        raise BatchError(
            f"for={batch.span / 3600:g}h by {batch.by.value} makes more than {MAX_BATCH:,} runs per firing"
        )
    moments = ticks.steps(origin, batch.span, batch.by) if batch.span is not None else [origin]
    rows: list[dict[str, Any]] = [{}]
    if batch.meta:
        names = list(batch.meta)
        rows = [dict(zip(names, values, strict=True)) for values in zip(*batch.meta.values(), strict=True)]
    if batch.meta_file is not None:
        if read is None:
            raise BatchError(f"meta-file {batch.meta_file}: cannot be read here")
        try:
            data = read(batch.meta_file)
        except OSError as exc:
            raise BatchError(f"meta-file {batch.meta_file}: {exc.strerror or exc}") from None
        file_rows = meta_rows(batch.meta_file, data)
        rows = [{**a, **b} for a, b in itertools.product(rows, file_rows)]
    if len(moments) * len(rows) > MAX_BATCH:
        raise BatchError(f"the batch makes {len(moments) * len(rows):,} runs, more than {MAX_BATCH:,} per firing")
    return [(moment, row) for moment, row in itertools.product(moments, rows)]


def meta_rows(path: str, data: bytes) -> list[dict[str, Any]]:
    """The rows of a meta-file: a JSON array of objects, JSON lines (one object a line), or CSV with a header
    (by the file's ending; `.json` may be either JSON form)."""
    text = data.decode("utf-8-sig", errors="replace")
    if path.lower().endswith(".csv"):
        rows: Sequence[Any] = list(csv.DictReader(io.StringIO(text)))
    else:
        try:
            whole = orjson.loads(text) if text.strip() else []
            rows = whole if isinstance(whole, list) else [whole]
        except orjson.JSONDecodeError:
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise BatchError(f"meta-file {path}:{number}: not JSON: {exc}") from None
    if not rows:
        raise BatchError(f"meta-file {path}: no rows")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise BatchError(f"meta-file {path}: row {number} is not an object of name: value pairs")
    return [dict(row) for row in rows]


def iso(moment: float) -> str:
    """A tick for people: ISO 8601 in UTC, seconds precision."""
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class BackfillError(JetdagError):
    """A backfill that cannot be planned; the message says what to give instead."""


def backfill(
    spec: WorkflowSpec,
    revision: int,
    start: float,
    end: float,
    now: float,
    *,
    by: BatchBy | None = None,
    trigger: str | None = None,
    params: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    read: Reader | None = None,
    limit: int = 10_000,
) -> list[RunSubmitted]:
    """The runs a backfill from `start` to `end` (both included) starts, oldest first: one per tick of each of
    the workflow's clock triggers (or of the one named `trigger`: its key, or the phase it starts at), or per
    `by` step from `start`. A tick's runs have the ids the scheduler gives that tick's runs, so a backfill
    over ticks already fired, or issued twice, starts nothing twice. A workflow without a clock needs `by`."""
    if end < start:
        raise BackfillError(f"the backfill ends ({iso(end)}) before it starts ({iso(start)})")
    clocks = [t for t in spec.triggers if t.cron]
    if trigger is not None:
        chosen = [t for t in clocks if trigger in (t.key("cron"), *t.start)]
        if not chosen:
            known = ", ".join(t.key("cron") for t in clocks) or "none"
            raise BackfillError(
                f"workflow {spec.name!r} has no clock trigger {trigger!r} (its clock triggers: {known})"
            )
        clocks = chosen
    if not clocks and by is None:
        raise BackfillError(
            f"workflow {spec.name!r} has no schedule to take ticks from: give a step (--by hour|day|month)"
        )
    out: list[RunSubmitted] = []
    for t in clocks or [Trigger()]:
        key = t.key("cron") if t.cron else "backfill"
        cron = Cron(t.cron, t.timezone) if t.cron and by is None else None
        for tick in ticks.backfill(cron, by, start, end, limit=limit):
            firing = Firing(t, key, tick, tick, meta=meta or {}, params=params or {}, source="backfill")
            out += submissions(spec, revision, firing, now, read)
            if len(out) > limit:
                raise BackfillTooLarge(len(out), limit)
    return sorted(out, key=lambda r: (r.logical_time or 0.0, r.run_id))
