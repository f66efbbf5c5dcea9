"""The SQL sandbox: users' plain SQL runs over the audit log, and nothing else does.

Every test uses a real DuckDB file, locked down the way the auditor locks its writer, and a cursor of it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import duckdb
import orjson
import pytest

from jetdag.engine.audit.query import QueryFailed, QueryRefused, json_safe, lock_down, run_query
from jetdag.engine.errors import JetdagError

ROWS = [
    (1, "2024-05-01 10:00:00+00", "run.submitted", '{"a": 1, "who": "ann"}'),
    (2, "2024-05-01 10:00:01.5+00", "task.started", '{"a": 2, "tags": ["x", "y"]}'),
    (3, "2024-05-01 10:00:04+00", "task.succeeded", '{"a": 3, "exit_code": 0}'),
]


@dataclass(frozen=True, slots=True)
class Audit:
    writer: duckdb.DuckDBPyConnection
    cur: duckdb.DuckDBPyConnection
    loot: Path
    """An empty directory every escape attempt aims at; it must stay empty."""


def open_audit(tmp_path: Path) -> Iterator[Audit]:
    writer = duckdb.connect(str(tmp_path / "audit.duckdb"))
    writer.execute("CREATE TABLE events (id UBIGINT PRIMARY KEY, ts TIMESTAMPTZ, kind VARCHAR, payload JSON)")
    writer.execute("CREATE SEQUENCE event_ids")
    writer.executemany("INSERT INTO events VALUES (?, ?::TIMESTAMPTZ, ?, ?::JSON)", ROWS)
    lock_down(writer)
    loot = tmp_path / "loot"
    loot.mkdir()
    cur = writer.cursor()
    try:
        yield Audit(writer, cur, loot)
    finally:
        cur.close()
        writer.close()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[Audit]:
    yield from open_audit(tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audit]:
    """One audit log for the escape attempts: none of them may change it, and each test checks that."""
    yield from open_audit(tmp_path_factory.mktemp("shared"))


def snapshot(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return con.execute("SELECT id, ts, kind, payload FROM events ORDER BY id").fetchall()


# -- plain SQL works ------------------------------------------------------------------------------------------------


def test_json_functions_aggregates_and_types(audit: Audit) -> None:
    result = run_query(
        audit.cur,
        """SELECT kind, payload->>'$.a' AS a, payload->'$.tags' AS tags, (payload->>'$.a')::INT * 10 AS a10
           FROM events ORDER BY id""",
    )
    assert result.columns == ["kind", "a", "tags", "a10"]
    assert result.types == ["VARCHAR", "VARCHAR", "JSON", "INTEGER"]
    assert result.rows == [
        ["run.submitted", "1", None, 10],
        ["task.started", "2", '["x","y"]', 20],
        ["task.succeeded", "3", None, 30],
    ]
    assert not result.truncated
    assert result.elapsed_ms >= 0

    agg = run_query(
        audit.cur, "SELECT count(*) AS n, sum((payload->>'$.a')::INT) AS total, max(id) AS last FROM events"
    )
    assert agg.rows == [[3, 6, 3]]
    assert agg.types == ["BIGINT", "HUGEINT", "UBIGINT"]


def test_timestamps_are_iso_and_intervals_are_seconds(audit: Audit) -> None:
    result = run_query(
        audit.cur,
        """SELECT ts, ts::DATE AS day, max(ts) OVER () - min(ts) OVER () AS span, INTERVAL 90 MINUTES AS iv
           FROM events WHERE id = 2""",
    )
    assert result.types == ["TIMESTAMP WITH TIME ZONE", "DATE", "INTERVAL", "INTERVAL"]
    assert result.rows == [["2024-05-01T10:00:01.500000+00:00", "2024-05-01", 0.0, 5400.0]]
    spans = run_query(audit.cur, "SELECT max(ts) - min(ts) AS span FROM events")
    assert spans.rows == [[4.0]]


def test_max_rows_truncates_and_says_so(audit: Audit) -> None:
    assert run_query(audit.cur, "FROM events", max_rows=3).truncated is False
    two = run_query(audit.cur, "FROM events ORDER BY id", max_rows=2)
    assert two.truncated is True
    assert [row[0] for row in two.rows] == [1, 2]
    none = run_query(audit.cur, "FROM events", max_rows=0)
    assert (none.rows, none.truncated, none.columns) == ([], True, ["id", "ts", "kind", "payload"])
    # An unbounded result is streamed, never fetched whole.
    huge = run_query(audit.cur, "SELECT * FROM range(10_000_000_000)", max_rows=5, timeout=2)
    assert (len(huge.rows), huge.truncated) == (5, True)


def test_describe_show_summarize_values_and_explain_select_run(audit: Audit) -> None:
    assert run_query(audit.cur, "SHOW TABLES").rows == [["events"]]
    assert run_query(audit.cur, "DESCRIBE events").rows[0][:2] == ["id", "UBIGINT"]
    assert run_query(audit.cur, "SUMMARIZE events").columns[:2] == ["column_name", "column_type"]
    assert run_query(audit.cur, "VALUES (1, 'a'), (2, 'b')").rows == [[1, "a"], [2, "b"]]
    assert run_query(audit.cur, "WITH k AS (SELECT DISTINCT kind FROM events) SELECT count(*) FROM k").rows == [[3]]
    assert run_query(audit.cur, "PIVOT events ON kind IN ('task.started') USING count(*) GROUP BY id").rows
    for sql in ("EXPLAIN SELECT * FROM events", "EXPLAIN ANALYZE SELECT count(*) FROM events"):
        assert run_query(audit.cur, sql).columns == ["explain_key", "explain_value"]


def test_values_are_json_safe(audit: Audit) -> None:
    result = run_query(
        audit.cur,
        """SELECT 1.25::DECIMAL(5, 2) AS d, '00000000-0000-0000-0000-000000000001'::UUID AS u, 'ab'::BLOB AS b,
                  'nan'::DOUBLE AS nan, 'inf'::DOUBLE AS inf, {'x': 1, 'y': [1, 2]} AS s, [1, 2]::INT[2] AS arr,
                  MAP {1: 'one'} AS m, 1::HUGEINT << 100 AS big, '12:30:00'::TIME AS t, true AS flag""",
    )
    assert result.rows == [
        [
            1.25,
            "00000000-0000-0000-0000-000000000001",
            "6162",
            None,
            None,
            {"x": 1, "y": [1, 2]},
            [1, 2],
            {"1": "one"},
            str(1 << 100),
            "12:30:00",
            True,
        ]
    ]
    assert orjson.loads(orjson.dumps(result.to_dict()))["rows"] == result.rows


def test_json_safe_directly() -> None:
    assert json_safe(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2024-01-02T03:04:05+00:00"
    assert json_safe(dt.timedelta(days=1, milliseconds=500)) == 86400.5
    assert json_safe(Decimal("NaN")) is None
    assert json_safe(-math.inf) is None
    assert json_safe(UUID(int=0)) == "00000000-0000-0000-0000-000000000000"
    assert json_safe(bytearray(b"\x00\xff")) == "00ff"
    assert json_safe((1, [dt.date(2024, 1, 1)], {"k": b"\x01"})) == [1, ["2024-01-01"], {"k": "01"}]
    assert json_safe(2**64 - 1) == 2**64 - 1
    assert json_safe(-(2**63) - 1) == str(-(2**63) - 1)
    assert json_safe(object.__new__(object)).startswith("<object object")


def test_duckdb_errors_are_query_failed_with_a_clean_message(audit: Audit) -> None:
    with pytest.raises(
        QueryFailed, match=r'^Catalog Error: Table with name evnts does not exist!; Did you mean "events"'
    ):
        run_query(audit.cur, "SELECT * FROM evnts")
    with pytest.raises(QueryFailed, match=r'^Parser Error: syntax error at or near "SELEC"$'):
        run_query(audit.cur, "SELEC 1")
    with pytest.raises(QueryFailed, match="Binder Error"):
        run_query(audit.cur, "SELECT nope FROM events")
    assert issubclass(QueryFailed, JetdagError) and issubclass(QueryRefused, JetdagError)
    assert run_query(audit.cur, "SELECT 1").rows == [[1]]  # the cursor is still usable


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("", "empty query: write one SELECT statement"),
        ("  ; -- nothing", "empty query: write one SELECT statement"),
        ("SELECT 1; SELECT 2; SELECT 3", "one statement at a time: found 3"),
    ],
)
def test_empty_and_multiple_statements_are_refused(audit: Audit, sql: str, reason: str) -> None:
    with pytest.raises(QueryRefused) as info:
        run_query(audit.cur, sql)
    assert info.value.reason == reason


# -- escapes --------------------------------------------------------------------------------------------------------

RO = "the audit log is read-only here; only SELECT (and EXPLAIN) statements run"
FILES = "reading files or URLs is not allowed: Cannot access file"

ESCAPES: list[tuple[str, str]] = [
    ("COPY events TO '{loot}/x.csv'", f"COPY is not allowed: {RO}"),
    ("COPY (SELECT 1) TO '{loot}/y.parquet' (FORMAT parquet)", f"COPY is not allowed: {RO}"),
    ("COPY events FROM '/etc/passwd'", f"COPY is not allowed: {RO}"),
    ("COPY FROM DATABASE audit TO other", f"COPY is not allowed: {RO}"),
    ("ATTACH '{loot}/other.db' AS other", "ATTACH is not allowed: only the audit log can be queried here"),
    ("ATTACH ':memory:' AS scratch", "ATTACH is not allowed"),
    ("DETACH audit", "DETACH is not allowed"),
    ("USE memory", "USE is not allowed: settings are locked"),
    ("SELECT * FROM read_csv('/etc/passwd')", f'{FILES} "/etc/passwd"'),
    ("SELECT * FROM read_text('/etc/passwd')", f'{FILES} "/etc/passwd"'),
    ("SELECT * FROM read_blob('/etc/hostname')", f'{FILES} "/etc/hostname"'),
    ("SELECT * FROM read_parquet('https://example.com/x.parquet')", f'{FILES} "https://example.com/x.parquet"'),
    ("SELECT * FROM read_json('s3://bucket/x.json')", "reading files or URLs is not allowed"),
    ("SELECT * FROM 'data.csv'", f'{FILES} "data.csv"'),
    ("SELECT * FROM glob('/etc/*')", f'{FILES} "/etc/*"'),
    ("SELECT * FROM sniff_csv('/etc/passwd')", FILES),
    ("INSTALL httpfs", "INSTALL is not allowed: extensions are off"),
    ("FORCE INSTALL httpfs", "INSTALL is not allowed: extensions are off"),
    ("LOAD httpfs", "LOAD is not allowed: extensions are off"),
    ("PRAGMA enable_profiling", "PRAGMA is not allowed: settings are locked"),
    ("SET enable_external_access = true", "SET is not allowed: settings are locked"),
    ("SET lock_configuration = false", "SET is not allowed: settings are locked"),
    ("RESET lock_configuration", "RESET is not allowed: settings are locked"),
    ("SET VARIABLE x = 1", "SET is not allowed: settings are locked"),
    ("CREATE TABLE t AS SELECT 1", f"CREATE is not allowed: {RO}"),
    ("CREATE TEMP TABLE t (a INT)", f"CREATE is not allowed: {RO}"),
    ("CREATE MACRO m(x) AS x", f"CREATE is not allowed: {RO}"),
    ("INSERT INTO events VALUES (9, now(), 'x', '{{}}')", f"INSERT is not allowed: {RO}"),
    ("WITH v AS (SELECT 9) INSERT INTO events SELECT 9, now(), 'x', NULL", f"INSERT is not allowed: {RO}"),
    ("DELETE FROM events", f"DELETE is not allowed: {RO}"),
    ("TRUNCATE events", f"TRUNCATE is not allowed: {RO}"),
    ("UPDATE events SET kind = 'x'", f"UPDATE is not allowed: {RO}"),
    ("DROP TABLE events", f"DROP is not allowed: {RO}"),
    ("ALTER TABLE events ADD COLUMN z INT", f"ALTER is not allowed: {RO}"),
    ("SELECT 1; DROP TABLE events", "one statement at a time: found 2"),
    ("EXPORT DATABASE '{loot}/e'", f"EXPORT is not allowed: {RO}"),
    ("IMPORT DATABASE '{loot}/e'", f"IMPORT is not allowed: {RO}"),
    ("CALL pragma_version()", "CALL is not allowed: procedures are off"),
    ("CHECKPOINT", f"CHECKPOINT is not allowed: {RO}"),
    ("VACUUM", f"VACUUM is not allowed: {RO}"),
    ("BEGIN TRANSACTION", "BEGIN is not allowed: transactions are not needed"),
    ("COMMIT", "COMMIT is not allowed: transactions are not needed"),
    ("PREPARE p AS SELECT 1", "PREPARE is not allowed: prepared statements are off"),
    ("UPDATE EXTENSIONS", "UPDATE is not allowed"),  # a statement type the Python enum does not know
    ("EXPLAIN ANALYZE INSERT INTO events VALUES (9, now(), 'x', NULL)", f"EXPLAIN of INSERT is not allowed: {RO}"),
    ("EXPLAIN (ANALYZE) DELETE FROM events", f"EXPLAIN of DELETE is not allowed: {RO}"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{loot}/z.csv'", f"EXPLAIN of COPY is not allowed: {RO}"),
    ("SELECT nextval('event_ids')", "writing is not allowed: the audit log is read-only here"),
    ("SELECT * FROM query('DROP TABLE events')", "Expected a single SELECT statement"),
]


@pytest.mark.parametrize(("sql", "reason"), ESCAPES, ids=[sql for sql, _ in ESCAPES])
def test_escape_is_refused(shared: Audit, sql: str, reason: str) -> None:
    before = snapshot(shared.writer)
    with pytest.raises((QueryRefused, QueryFailed)) as info:
        run_query(shared.cur, sql.format(loot=shared.loot))
    assert reason in str(info.value)
    assert snapshot(shared.writer) == before
    assert list(shared.loot.iterdir()) == []


@pytest.mark.parametrize(
    "sql",
    [
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
        "SELECT sum(a.range * b.range) FROM range(100_000_000) a, range(100_000_000) b",
    ],
    ids=["recursive-cte-bomb", "huge-cross-join"],
)
def test_runaway_queries_are_stopped_by_the_timeout(audit: Audit, sql: str) -> None:
    with pytest.raises(QueryFailed) as info:
        run_query(audit.cur, sql, timeout=0.4)
    assert str(info.value) == "query timed out after 0.4s (limit)"
    assert run_query(audit.cur, "SELECT count(*) FROM events").rows == [[3]]  # no interrupt leaks into the next


def test_all_escapes_in_a_row_leave_everything_as_it_was(audit: Audit) -> None:
    before = snapshot(audit.writer)
    settings = audit.writer.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall()
    refused = 0
    for sql, reason in ESCAPES:
        with pytest.raises((QueryRefused, QueryFailed)) as info:
            run_query(audit.cur, sql.format(loot=audit.loot))
        assert reason in str(info.value), sql
        refused += 1
    assert refused >= 20
    assert snapshot(audit.writer) == before
    assert run_query(audit.cur, "SELECT count(*) FROM events").rows == [[3]]
    assert audit.writer.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall() == settings
    assert list(audit.loot.iterdir()) == []
    assert not Path("data.csv").exists()
    tables = run_query(audit.cur, "SELECT table_name FROM duckdb_tables() ORDER BY ALL").rows
    assert tables == [["events"]]


# -- the writer ------------------------------------------------------------------------------------------------------


def test_the_writer_cannot_change_settings_but_still_ingests(audit: Audit) -> None:
    for sql in (
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET lock_configuration",
        "SET autoload_known_extensions = true",
        "SET memory_limit = '64GB'",
        "SET threads = 64",
    ):
        with pytest.raises(duckdb.InvalidInputException, match="the configuration has been locked"):
            audit.writer.execute(sql)
    with pytest.raises(duckdb.PermissionException):
        audit.writer.execute(f"COPY events TO '{audit.loot}/w.csv'")
    settings = dict(audit.writer.execute("SELECT name, value FROM duckdb_settings()").fetchall())
    assert settings["enable_external_access"] == "false"
    assert settings["autoinstall_known_extensions"] == "false"
    assert settings["autoload_known_extensions"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["threads"] == "2"
    # DuckDB itself allows its own files once external access is off: the database, its WAL and its spill
    # directory (nothing else; `..` is normalized). So read_blob() of the audit file works, and shows no more
    # than a SELECT can. allowed_directories can no longer be changed, so this is pinned, not fixed.
    db = audit.writer.execute("SELECT path FROM duckdb_databases() WHERE database_name = 'audit'").fetchone()
    assert db is not None
    assert settings["allowed_directories"] == f"[{db[0]}.tmp/]"
    assert run_query(audit.cur, f"SELECT size > 0 FROM read_blob('{db[0]}')").rows == [[True]]
    with pytest.raises(QueryRefused, match="reading files or URLs is not allowed"):
        run_query(audit.cur, f"SELECT * FROM read_text('{db[0]}.tmp/../../../../etc/passwd')")

    audit.writer.execute("INSERT INTO events VALUES (nextval('event_ids') + 100, now(), 'run.done', '{\"a\": 4}')")
    audit.writer.execute("CHECKPOINT")
    assert run_query(audit.cur, "SELECT id, payload->>'$.a' FROM events WHERE kind = 'run.done'").rows == [[101, "4"]]
    assert list(audit.loot.iterdir()) == []


def test_lock_down_twice_is_harmless_and_an_unlocked_instance_is_refused(audit: Audit, tmp_path: Path) -> None:
    lock_down(audit.writer)
    assert run_query(audit.cur, "SELECT 1").rows == [[1]]
    loose = duckdb.connect(str(tmp_path / "loose.duckdb"))
    try:
        with pytest.raises(RuntimeError, match="locked-down"):
            run_query(loose.cursor(), "SELECT 1")
    finally:
        loose.close()
