"""The tasks page's stored sort time (`tasks.sort_at`, schema version 3): kept equal to `schema.TASK_SORT`
by ingest whatever order the engine's and the workers' messages arrive in, filled in place when a
version 2 file is opened, and filled when an export made before it is restored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from jetdag.engine.audit import schema
from jetdag.engine.audit.store import AuditStore, Message, decode_cursor
from jetdag.engine.events import RunSubmitted, TaskFailed, TaskStarted, TaskSucceeded, Transition
from jetdag.engine.messages import encode_event, encode_step
from tests.web.test_tasks_api import chain_messages


def stale_sort_rows(store: AuditStore) -> list[tuple[Any, ...]]:
    """Rows whose stored sort time is not what TASK_SORT computes from their times (none, if all is well)."""
    return store.con.execute(
        f"SELECT run_id, task, sort_at, {schema.TASK_SORT} FROM tasks WHERE sort_at IS DISTINCT FROM {schema.TASK_SORT}"
    ).fetchall()


def every_page(store: AuditStore, **filters: Any) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        page = store.tasks(**filters, cursor=decode_cursor(cursor) if cursor else None, limit=4)
        seen += [(t["run_id"], t["task"]) for t in page["tasks"]]
        if (cursor := page["next"]) is None:
            return seen


def columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'tasks' ORDER BY column_index"
    ).fetchall()
    return [r[0] for r in rows]


def test_a_version_2_file_gets_its_sort_column_filled_in_place(tmp_path: Path) -> None:
    path = tmp_path / "audit.duckdb"
    store = AuditStore(path).open()
    store.ingest(chain_messages(9, 1_700_000_000.0))
    fresh_columns = columns(store.con)
    store.close()
    con = duckdb.connect(str(path))  # make it a version 2 file: the tasks table without sort_at
    con.execute("ALTER TABLE tasks DROP COLUMN sort_at")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    # The order version 2 paged in, computed per row as it did then.
    before = con.execute(f"SELECT run_id, task FROM tasks ORDER BY {schema.TASK_SORT} DESC, run_id DESC, task DESC")
    expected = [(r[0], r[1]) for r in before.fetchall()]
    window = con.execute(
        f"""SELECT run_id, task FROM tasks WHERE {schema.TASK_SORT} >= to_timestamp(1700000003.0)
            AND {schema.TASK_SORT} < to_timestamp(1700000006.5) ORDER BY ALL"""
    ).fetchall()
    con.close()

    store = AuditStore(path).open()
    assert not store.rebuilt  # kept, not rebuilt from JD_EVENTS
    assert store.con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(schema.VERSION),)
    assert columns(store.con) == fresh_columns  # a migrated file has the shape of a new one
    assert store.con.execute("SELECT count(*) FROM tasks WHERE sort_at IS NULL").fetchone() == (0,)
    assert stale_sort_rows(store) == []
    assert len(expected) == 18 and every_page(store) == expected
    assert sorted(every_page(store, since=1_700_000_003.0, until=1_700_000_006.5)) == window
    # Ingest goes on keeping it: a new run, and the next batch of an already stored one.
    store.ingest(chain_messages(12, 1_700_000_000.0)[len(chain_messages(9, 1_700_000_000.0)) :])
    assert stale_sort_rows(store) == []
    assert every_page(store)[:2] == [("R00011", "b"), ("R00011", "a")]
    store.close()


def test_ingest_keeps_the_sort_time_whatever_order_reports_and_steps_arrive_in(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.duckdb").open()
    run, t = "RUN1", 1_700_000_000.0
    subject = f"jd.evt.0.{run}"
    submitted = (subject, encode_event(RunSubmitted(run, "wf", 1, {}, t)))
    queued = (f"{subject}.step", encode_step(run, 1, "running", [Transition("a", 1, "queued", t)]))
    # The worker's reports overtake the engine's steps: the report creates the row, the steps complete it.
    started = (subject, encode_event(TaskStarted(run, "a", 1, t + 1, "w1")))
    failed = (subject, encode_event(TaskFailed(run, "a", 1, t + 2, "ValueError: x", "w1", True)))
    retried = (f"{subject}.step", encode_step(run, 2, "running", [
        Transition("a", 1, "running", t + 1), Transition("a", 1, "retrying", t + 2, "ValueError: x"),
        Transition("a", 2, "queued", t + 3)]))  # fmt: skip
    started_2 = (subject, encode_event(TaskStarted(run, "a", 2, t + 4, "w2")))
    succeeded = (subject, encode_event(TaskSucceeded(run, "a", 2, t + 5, "w2", {})))
    done = (f"{subject}.step", encode_step(run, 3, "running", [
        Transition("a", 2, "running", t + 4), Transition("a", 2, "succeeded", t + 5),
        Transition("b", 1, "queued", t + 5)]))  # fmt: skip
    # And a report alone moves a row the steps made: b is queued, then reported started.
    started_b = (subject, encode_event(TaskStarted(run, "b", 1, t + 6, "w1")))
    order = [[submitted, started], [failed], [queued], [retried, started_2], [done], [succeeded], [started_b]]
    seq = 0
    sort_times = []
    for batch in order:
        messages = []
        for subj, data in batch:
            seq += 1
            messages.append(Message(seq, subj, data, t))
        store.ingest(messages)
        assert stale_sort_rows(store) == [], batch
        sort_times.append(dict(store.con.execute("SELECT task, epoch(sort_at) FROM tasks").fetchall()))
    # a: started (by the report) before it was queued (by the step), then finished at its success.
    a_1, a_done = {"a": t + 1}, {"a": t + 5, "b": t + 5}
    assert sort_times == [a_1, a_1, a_1, a_1, a_done, a_done, {"a": t + 5, "b": t + 6}]
    store.close()


def test_an_export_from_before_the_sort_column_restores_with_it_filled(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.duckdb").open()
    store.ingest(chain_messages(5, 1_700_000_000.0))
    expected = every_page(store)
    store.export(tmp_path / "backup")
    store.close()
    con = duckdb.connect()  # what a version 2 auditor exported: the same files without sort_at
    for file in (tmp_path / "backup" / "tasks").glob("*/*.parquet"):
        older = file.with_suffix(".older")
        con.execute(f"COPY (SELECT * EXCLUDE (sort_at) FROM read_parquet('{file}')) TO '{older}' (FORMAT parquet)")
        older.replace(file)
    con.close()
    restored = AuditStore(tmp_path / "restored" / "audit.duckdb")
    assert restored.restore(tmp_path / "backup")["tasks"] == 10
    restored.open()
    assert stale_sort_rows(restored) == []
    assert every_page(restored) == expected
    restored.close()
