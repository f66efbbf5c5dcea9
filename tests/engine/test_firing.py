"""What a trigger starts when it fires, and what a backfill plans: pure, no NATS."""

from __future__ import annotations

import datetime as dt

import pytest

from jetdag.engine.errors import BackfillTooLarge
from jetdag.engine.firing import BackfillError, BatchError, Firing, backfill, fire_id, meta_rows, submissions
from jetdag.engine.model import Batch, BatchBy, TaskSpec, Trigger, WorkflowSpec

HOUR = 3600.0
T0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()
CRON = Trigger(cron="0 * * * *", offset=-HOUR)
SPEC = WorkflowSpec("etl", (TaskSpec("a", "noop"),), triggers=(CRON,))


def test_a_fire_is_named_by_what_fired() -> None:
    [run] = submissions(SPEC, 3, Firing(CRON, "cron", T0, T0), now=T0 + 0.2)
    again = submissions(SPEC, 3, Firing(CRON, "cron", T0, T0), now=T0 + 9.0)[0]
    assert run.run_id == again.run_id == fire_id("etl", Firing(CRON, "cron", T0, T0))
    assert run.logical_time == T0 - HOUR and run.trigger == "cron" and run.def_rev == 3
    assert len(run.run_id) == 26 and run.run_id < fire_id("etl", Firing(CRON, "cron", T0 + HOUR, T0 + HOUR))
    other = {
        fire_id("etl", Firing(CRON, "cron", T0 + HOUR, T0)),  # another tick
        fire_id("etl", Firing(CRON, "cron:load", T0, T0)),  # another trigger
        fire_id("other", Firing(CRON, "cron", T0, T0)),  # another workflow
        fire_id("etl", Firing(CRON, "files", T0, T0, identity=("/in/a.csv", 10))),  # a file
        fire_id("etl", Firing(CRON, "files", T0, T0, identity=("/in/a.csv", 11))),  # the same, grown
    }
    assert run.run_id not in other and len(other) == 5


def test_a_batch_starts_a_run_per_item_oldest_first() -> None:
    lastweek = Trigger(cron="0 7 7 * * *", batch=Batch(span=-168 * HOUR, by=BatchBy.DAY), start=("worker:lastweek",))
    runs = submissions(SPEC, 1, Firing(lastweek, "cron:worker:lastweek", T0, T0), now=T0)
    assert [r.logical_time for r in runs] == [T0 - d * 86400 for d in range(7, -1, -1)]
    assert all(r.start == ["worker:lastweek"] for r in runs) and len({r.run_id for r in runs}) == 8
    meta = Trigger(cron="0 1 2 * * *", batch=Batch(meta={"name": ("a", "b"), "value": ("1", "2")}))
    runs = submissions(SPEC, 1, Firing(meta, "cron", T0, T0, meta={"file": "/x"}), now=T0)
    assert [r.meta for r in runs] == [
        {"file": "/x", "name": "a", "value": "1"},
        {"file": "/x", "name": "b", "value": "2"},
    ]


def test_a_batch_that_cannot_be_expanded_is_one_failed_run() -> None:
    rows = Trigger(cron="0 5 5 * * *", batch=Batch(meta_file="data.json"))

    def missing(path: str) -> bytes:
        raise FileNotFoundError(2, "No such file or directory", path)

    [run] = submissions(SPEC, 1, Firing(rows, "cron", T0, T0), now=T0, read=missing)
    assert run.error == "meta-file data.json: No such file or directory"
    huge = Trigger(cron="0 * * * *", batch=Batch(span=-24 * 3650 * HOUR, by=BatchBy.HOUR))
    [run] = submissions(SPEC, 1, Firing(huge, "cron", T0, T0), now=T0)
    assert run.error is not None and "more than 10,000 runs" in run.error


@pytest.mark.parametrize(
    ("path", "data", "rows"),
    [
        ("d.json", b'[{"a": 1}, {"a": 2}]', [{"a": 1}, {"a": 2}]),
        ("d.json", b'{"a": 1}\n\n{"a": 2}\n', [{"a": 1}, {"a": 2}]),
        ("d.jsonl", b'{"a": "x"}\n', [{"a": "x"}]),
        ("d.csv", b"\xef\xbb\xbfname,value\na,1\nb,2\n", [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]),
    ],
)
def test_meta_files_are_json_json_lines_or_csv(path: str, data: bytes, rows: list[dict[str, object]]) -> None:
    assert meta_rows(path, data) == rows


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"", "no rows"), (b"[1, 2]", "row 1 is not an object"), (b'{"a": 1}\n{oops\n', "d.json:2: not JSON")],
)
def test_a_bad_meta_file_says_where(data: bytes, why: str) -> None:
    with pytest.raises(BatchError, match=why):
        meta_rows("d.json", data)


def test_a_backfill_plans_the_schedules_ticks_with_the_schedulers_ids() -> None:
    runs = backfill(SPEC, 2, T0, T0 + 47 * HOUR, now=T0)
    assert len(runs) == 48 and runs[0].run_id == fire_id("etl", Firing(CRON, "cron", T0, T0))
    assert all(r.trigger == "backfill" for r in runs)
    by_day = backfill(SPEC, 2, T0, T0 + 47 * HOUR, now=T0, by=BatchBy.DAY, params={"p": 1}, meta={"m": "x"})
    assert [r.logical_time for r in by_day] == [T0 - HOUR, T0 + 86400 - HOUR]
    assert by_day[0].params == {"p": 1} and by_day[0].meta == {"m": "x"}


def test_a_backfill_says_what_is_missing() -> None:
    manual = WorkflowSpec("manual", (TaskSpec("a", "noop"),))
    with pytest.raises(BackfillError, match="has no schedule to take ticks from: give a step"):
        backfill(manual, 1, T0, T0 + HOUR, now=T0)
    assert [r.trigger for r in backfill(manual, 1, T0, T0 + HOUR, now=T0, by=BatchBy.HOUR)] == ["backfill"] * 2
    with pytest.raises(BackfillError, match=r"ends .* before it starts"):
        backfill(SPEC, 1, T0, T0 - HOUR, now=T0)
    with pytest.raises(BackfillError, match=r"no clock trigger .nightly. \(its clock triggers: cron\)"):
        backfill(SPEC, 1, T0, T0 + HOUR, now=T0, trigger="nightly")
    with pytest.raises(BackfillTooLarge):
        backfill(SPEC, 1, T0, T0 + 20_000 * HOUR, now=T0)
