"""The audit store on a real DuckDB file: ingest is idempotent, tables follow the events, prune and export."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import msgpack
import pytest

from jetdag.engine import subjects as S
from jetdag.engine.audit import schema
from jetdag.engine.audit.store import AuditStore, Message
from jetdag.engine.errors import ConfigError
from jetdag.engine.events import RunSubmitted, TaskFailed, TaskStarted, TaskSucceeded, Transition
from jetdag.engine.messages import encode_event, encode_step

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def history(run: str = "R1", first_seq: int = 1) -> list[Message]:
    """A run of one task that fails once, is retried and succeeds, as JD_EVENTS holds it."""
    subject = f"jd.evt.3.{run}"
    oops = "ValueError: bad row 7"
    bodies = [
        (subject, encode_event(RunSubmitted(run, "etl", 2, {"day": "d"}, T0, logical_time=T0 - 3600))),
        (f"{subject}.step", encode_step(run, 1, "running", [Transition(None, 0, "running", T0 + 1),
                                                            Transition("a", 1, "queued", T0 + 1)])),
        (subject, encode_event(TaskStarted(run, "a", 1, T0 + 2, "w1"))),
        (subject, encode_event(TaskFailed(run, "a", 1, T0 + 3, "ValueError: bad row 7", "w1"))),
        (f"{subject}.step", encode_step(run, 2, "running", [Transition("a", 1, "running", T0 + 2),
                                                            Transition("a", 1, "retrying", T0 + 3, oops)])),
        (f"{subject}.step", encode_step(run, 3, "running", [Transition("a", 2, "queued", T0 + 5)])),
        (subject, encode_event(TaskStarted(run, "a", 2, T0 + 6, "w2"))),
        (subject, encode_event(TaskSucceeded(run, "a", 2, T0 + 8, "w2", {"exit_code": 0, "rows": 7}))),
        (f"{subject}.step", encode_step(run, 4, "succeeded", [Transition("a", 2, "running", T0 + 6),
                                                              Transition("a", 2, "succeeded", T0 + 8),
                                                              Transition(None, 0, "succeeded", T0 + 8)])),
    ]  # fmt: skip
    return [Message(first_seq + i, s, d, T0) for i, (s, d) in enumerate(bodies)]


def file_seen(seq: int, path: str, *, run: str = "", reason: str | None = None, ts: float = T0 + 9) -> Message:
    """A file trigger's record of one file, as the file watcher publishes it."""
    body = {"v": 1, "k": "file.seen", "run": run, "workflow": "etl", "trigger": "files:load", "path": path,
            "size": 2048, "mtime": T0 - 60, "ts": ts}  # fmt: skip
    if reason is not None:
        body["reason"] = reason
    return Message(seq, S.file_record_subject("etl"), msgpack.packb(body), T0)


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    opened = AuditStore(tmp_path / "audit.duckdb").open()
    yield opened  # type: ignore[misc]
    opened.close()


def rows(store: AuditStore, sql: str) -> list[tuple[object, ...]]:
    return store.con.cursor().execute(sql).fetchall()


def test_tables_follow_the_events(store: AuditStore) -> None:
    assert store.ingest(history()) == 9
    [run] = rows(
        store, "SELECT workflow, version, status, epoch(started_at), epoch(finished_at), duration_ms FROM runs"
    )
    assert run == ("etl", 2, "succeeded", T0 + 1, T0 + 8, 7000)
    assert rows(store, "SELECT task, status, attempts, elapsed_ms FROM tasks") == [("a", "succeeded", 2, 7000)]
    attempts = rows(
        store,
        "SELECT attempt, status, worker_id, error_type, error, exit_code, wait_ms, run_ms, result->>'$.rows' "
        "FROM attempts ORDER BY attempt",
    )
    assert attempts == [
        (1, "failed", "w1", "ValueError", "ValueError: bad row 7", None, 1000, 1000, None),
        (2, "succeeded", "w2", None, None, 0, 1000, 2000, "7"),
    ]
    assert rows(store, "SELECT worker_id, results FROM workers ORDER BY 1") == [("w1", 1), ("w2", 1)]
    assert rows(store, "SELECT epoch(logical_time), params->>'$.day' FROM runs") == [(T0 - 3600, "d")]
    assert rows(store, "SELECT DISTINCT workflow FROM events") == [("etl",)], "every event names its workflow"


def test_a_batch_applied_twice_changes_nothing(store: AuditStore) -> None:
    batch = history()
    store.ingest(batch)
    before = (store.counts(), rows(store, "SELECT * FROM attempts ORDER BY 1, 2, 3"))
    assert store.ingest(batch) == 0
    assert store.ingest(batch[3:6]) == 0, "a partial redelivery too"
    assert (store.counts(), rows(store, "SELECT * FROM attempts ORDER BY 1, 2, 3")) == before


def test_any_split_into_batches_gives_the_same_tables(tmp_path: Path) -> None:
    whole = AuditStore(tmp_path / "whole.duckdb").open()
    whole.ingest(history())
    pieces = AuditStore(tmp_path / "pieces.duckdb").open()
    for message in history():
        pieces.ingest([message])
    for table in ("runs", "tasks", "attempts", "workers"):
        sql = f"SELECT * FROM {table} ORDER BY ALL"
        assert rows(pieces, sql) == rows(whole, sql), table
    whole.close()
    pieces.close()


def test_file_records_become_file_rows_and_touch_no_run(store: AuditStore) -> None:
    store.ingest(history())
    runs_before = rows(store, "SELECT * FROM runs ORDER BY ALL"), rows(store, "SELECT * FROM tasks ORDER BY ALL")
    batch = [file_seen(10, "in/a.csv", run="R1"), file_seen(11, "in/b.csv", reason="the schedule is off")]
    assert store.ingest(batch) == 2
    files = rows(
        store,
        "SELECT id, path, size, epoch(mtime), workflow, trigger, run_id, reason, epoch(seen_at) FROM files ORDER BY id",
    )
    assert files == [
        (10, "in/a.csv", 2048, T0 - 60, "etl", "files:load", "R1", None, T0 + 9),
        (11, "in/b.csv", 2048, T0 - 60, "etl", "files:load", None, "the schedule is off", T0 + 9),
    ]
    # Like every message they are events too; one that started no run has run_id '' there (NOT NULL).
    assert rows(store, "SELECT id, run_id, kind FROM events WHERE id >= 10 ORDER BY id") == [
        (10, "R1", "file.seen"),
        (11, "", "file.seen"),
    ]
    assert (rows(store, "SELECT * FROM runs ORDER BY ALL"), rows(store, "SELECT * FROM tasks ORDER BY ALL")) == (
        runs_before
    )
    assert rows(store, "SELECT count(*) FROM workers") == [(2,)]
    before = store.counts()
    assert store.ingest(batch) == 0 and store.ingest(batch[1:]) == 0, "a redelivered batch changes nothing"
    assert store.counts() == before


def test_a_version_3_file_gets_the_new_files_table_in_place(store: AuditStore, tmp_path: Path) -> None:
    store.ingest(history())
    fresh = rows(store, "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'files' ORDER BY ALL")
    kept = rows(store, "SELECT * FROM attempts ORDER BY ALL")
    store.close()
    v3 = """DROP TABLE files;
        CREATE TABLE files (path VARCHAR, run_id VARCHAR, workflow VARCHAR, seen_at TIMESTAMPTZ,
                            PRIMARY KEY (path, run_id));
        UPDATE meta SET value = '3' WHERE key = 'schema';"""
    con = duckdb.connect(str(store.path))  # make it a version 3 file: the files table nothing ever wrote
    con.execute(v3)
    con.close()

    store.open()
    assert not store.rebuilt, "kept, not rebuilt from JD_EVENTS"
    assert rows(store, "SELECT value FROM meta WHERE key = 'schema'") == [(str(schema.VERSION),)]
    columns = "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'files' ORDER BY ALL"
    assert rows(store, columns) == fresh
    assert rows(store, "SELECT * FROM attempts ORDER BY ALL") == kept
    assert store.ingest([file_seen(10, "in/a.csv", run="R1")]) == 1
    assert rows(store, "SELECT path, run_id FROM files") == [("in/a.csv", "R1")]

    # Restoring into a version 3 file migrates it too, rather than stamping version 4 over the old table.
    backup = tmp_path / "backup"
    store.export(backup)
    store.close()
    older = AuditStore(tmp_path / "older.duckdb").open()
    older.close()
    con = duckdb.connect(str(older.path))
    con.execute(v3)
    con.close()
    assert older.restore(backup)["files"] == 1
    assert rows(older.open(), "SELECT path, run_id FROM files") == [("in/a.csv", "R1")]
    older.close()
    con = duckdb.connect(str(older.path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    con.close()
    with pytest.raises(ConfigError, match="restore into a new file"):
        older.restore(backup)
    store.open()  # for the fixture to close


def test_garbage_is_skipped_not_stored(store: AuditStore) -> None:
    assert store.ingest([Message(1, "jd.evt.1.X", b"\xc1 not msgpack", T0), Message(2, "jd.evt.1.X", b"{}", T0)]) == 0
    assert store.counts()["events"] == 0


def test_prune_forgets_old_finished_runs_and_keeps_live_ones(store: AuditStore) -> None:
    store.ingest(history("OLD", 1))
    live = [m for m in history("LIVE", 100) if m.seq < 103]  # submitted, running, started: still live
    store.ingest(live)
    removed = store.prune(dt.datetime.fromtimestamp(T0 + 3600, dt.UTC))
    assert removed["runs"] == 1 and removed["events"] == 9
    assert rows(store, "SELECT run_id, status FROM runs") == [("LIVE", "running")]
    assert store.counts()["events"] == 3


def test_prune_forgets_files_by_their_own_age(store: AuditStore) -> None:
    day = 86_400.0
    store.ingest(history("LIVE", 1)[:3])  # a live run: its file goes with its age all the same
    store.ingest([file_seen(10, "in/old.csv", run="LIVE"), file_seen(11, "in/older.csv", reason="the schedule is off"),
                  file_seen(12, "in/new.csv", reason="the schedule is off", ts=T0 + 10 * day)])  # fmt: skip
    removed = store.prune(dt.datetime.fromtimestamp(T0 + day, dt.UTC))
    assert (removed["files"], removed["events"], removed["runs"]) == (2, 2, 0)
    assert rows(store, "SELECT path FROM files") == [("in/new.csv",)]
    assert rows(store, "SELECT id FROM events ORDER BY id") == [(1,), (2,), (3,), (12,)]


def test_export_writes_parquet_per_table_and_day_and_the_store_stays_usable(store: AuditStore, tmp_path: Path) -> None:
    store.ingest(history())
    files = store.export(tmp_path / "backup")
    assert (tmp_path / "backup" / "workers.parquet").exists()
    assert list((tmp_path / "backup" / "events").glob("day=2026-01-01/*.parquet"))
    check = duckdb.connect()
    total = check.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/backup/events/*/*.parquet')").fetchone()
    assert total == (9,) and len(files) == 7
    assert store.ingest(history("R2", 50)) == 9, "the store is open and locked again after the export"


def test_the_sandbox_holds_on_the_writer_instance(store: AuditStore, tmp_path: Path) -> None:
    with pytest.raises(duckdb.Error):
        store.con.cursor().execute(f"COPY events TO '{tmp_path}/leak.csv'")
    assert not (tmp_path / "leak.csv").exists()


def test_an_export_restores_into_a_fresh_file_row_for_row(store: AuditStore, tmp_path: Path) -> None:
    store.ingest(history("R1", 1))
    store.ingest(history("R2", 20))
    store.ingest([file_seen(40, "in/a.csv", run="R2"), file_seen(41, "in/b.csv", reason="the schedule is off")])
    store.export(tmp_path / "backup")
    assert list((tmp_path / "backup" / "files").glob("day=2026-01-01/*.parquet"))
    restored = AuditStore(tmp_path / "restored" / "audit.duckdb")
    loaded = restored.restore(tmp_path / "backup")
    assert loaded == {**store.counts(), "alerts": 0}
    restored.open()
    for table in ("events", "runs", "tasks", "attempts", "workers", "files"):
        sql = f"SELECT * FROM {table} ORDER BY ALL"
        assert rows(restored, sql) == rows(store, sql), table
    assert restored.ingest(history("R2", 20)) == 0, "the restored events count as stored"
    restored.close()


def test_events_after_a_restart_still_name_their_workflow(tmp_path: Path) -> None:
    batch = history()
    first = AuditStore(tmp_path / "audit.duckdb").open()
    first.ingest(batch[:2])
    first.close()
    again = AuditStore(tmp_path / "audit.duckdb").open()
    again.ingest(batch[2:])
    assert rows(again, "SELECT count(*) FROM events WHERE workflow = 'etl'") == [(9,)]
    again.close()
