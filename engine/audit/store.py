"""The audit log's one writer: batches of JD_EVENTS messages in, kept-current tables out.

A batch is one transaction. Rows travel into DuckDB as one JSON document per table (a hundred
times faster than executemany), events already present are dropped by id, and the kept-current
tables are updated from the new events only, with set-based upserts. Applying a batch twice
therefore changes nothing, which is what makes redelivery and `kill -9` harmless.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import msgpack
import orjson

from jetdag.engine.audit import query, schema
from jetdag.engine.audit.summary import AttemptTiming
from jetdag.engine.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of JD_EVENTS as the auditor got it."""

    seq: int
    subject: str
    data: bytes
    time: float
    """The stream's timestamp, used when the message carries none."""


@dataclass(slots=True)
class Rows:
    """A batch turned into rows for the staging tables."""

    events: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def to_rows(messages: Iterable[Message]) -> Rows:
    """Rows for every message jetdag wrote; anything else is counted and left out (the engine
    dead-letters malformed messages on its side)."""
    rows = Rows()
    for m in messages:
        try:
            body = msgpack.unpackb(m.data, raw=False) if m.data[:1] not in b"{[" else orjson.loads(m.data)
        except (ValueError, msgpack.UnpackException, msgpack.ExtraData):
            rows.skipped += 1
            continue
        run = body.get("run") if isinstance(body, dict) else None
        kind = body.get("k") if isinstance(body, dict) else None
        if not isinstance(run, str) or not isinstance(kind, str):
            rows.skipped += 1
            continue
        ts = body.get("ts")
        if kind == "run.step":
            transitions = body.get("transitions") or []
            for i, t in enumerate(transitions):
                rows.transitions.append({**_pick(t), "id": m.seq, "idx": i, "run_id": run})
            ts = max((t.get("ts", 0) for t in transitions), default=None)
        task, attempt = body.get("task"), body.get("attempt")
        rows.events.append(
            {
                "id": m.seq,
                "ts": ts if isinstance(ts, int | float) else m.time,
                "run_id": run,
                "workflow": body.get("workflow") if isinstance(body.get("workflow"), str) else None,
                "task": task if isinstance(task, str) else None,
                "attempt": attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
                "kind": kind,
                "worker_id": body.get("worker") or None,
                "payload": orjson.dumps(body, default=str, option=orjson.OPT_NON_STR_KEYS).decode(),
            }
        )
    return rows


def _pick(t: Any) -> dict[str, Any]:
    t = t if isinstance(t, dict) else {}
    return {k: t.get(k) for k in ("task", "attempt", "status", "ts", "error")}


_EVENT_COLUMNS = (
    '{"id":"UBIGINT","ts":"DOUBLE","run_id":"VARCHAR","workflow":"VARCHAR","task":"VARCHAR","attempt":"INTEGER",'
    '"kind":"VARCHAR","worker_id":"VARCHAR","payload":"VARCHAR"}'
)
_TRANSITION_COLUMNS = (
    '{"id":"UBIGINT","idx":"INTEGER","run_id":"VARCHAR","task":"VARCHAR","attempt":"INTEGER",'
    '"status":"VARCHAR","ts":"DOUBLE","error":"VARCHAR"}'
)

# How a task row's times merge with a batch's (`excluded`: NULL where the batch says nothing), and
# its sort time from the merged ones: an upsert's SET sees the row as it was, not as it sets it.
_TASK_MERGED = {
    "first_queued_at": "coalesce(tasks.first_queued_at, excluded.first_queued_at)",
    "finished_at": "coalesce(excluded.finished_at, tasks.finished_at)",
    "started_at": "least(tasks.started_at, excluded.started_at)",
}
_TASK_SORT_MERGED = schema.task_sort(_TASK_MERGED["finished_at"], _TASK_MERGED["started_at"],
                                     _TASK_MERGED["first_queued_at"])  # fmt: skip

# Each statement reads only the batch's new events (b_events / b_steps), so a batch applied
# twice changes nothing. Transitions are ordered by (event id, index): stream order.
_APPLY = [
    # Runs: created by their submission, moved by the engine's run transitions.
    """
    INSERT INTO runs (run_id, workflow, version, status, params, meta, logical_time, created_at)
    SELECT run_id, payload->>'$.workflow', TRY_CAST(payload->>'$.def_rev' AS INTEGER), 'pending',
           payload->'$.params', payload->'$.meta',
           coalesce(to_timestamp(TRY_CAST(payload->>'$.logical_time' AS DOUBLE)), ts), ts
    FROM b_events WHERE kind = 'run.submitted'
    QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY id) = 1
    ON CONFLICT (run_id) DO NOTHING
    """,
    """
    INSERT INTO runs (run_id, status, started_at, finished_at, error)
    SELECT run_id,
           arg_max(status, id * 100000 + idx),
           to_timestamp(min(ts) FILTER (WHERE status = 'running')),
           to_timestamp(max(ts) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled'))),
           arg_max(error, id * 100000 + idx) FILTER (WHERE error IS NOT NULL)
    FROM b_steps WHERE task IS NULL GROUP BY run_id
    ON CONFLICT (run_id) DO UPDATE SET
        status = excluded.status,
        started_at = coalesce(runs.started_at, excluded.started_at),
        finished_at = coalesce(excluded.finished_at, runs.finished_at),
        error = coalesce(excluded.error, runs.error)
    """,
    # Tasks: the last transition wins; attempts count up. The workflow comes from the step event's row.
    f"""
    INSERT INTO tasks (run_id, task, status, attempts, first_queued_at, finished_at, error, workflow, started_at,
                       sort_at)
    SELECT *, {schema.TASK_SORT} FROM (
        SELECT s.run_id, s.task,
               arg_max(s.status, s.id * 100000 + s.idx),
               max(s.attempt),
               to_timestamp(min(s.ts) FILTER (WHERE s.status = 'queued')) AS first_queued_at,
               to_timestamp(max(s.ts) FILTER (
                   WHERE s.status IN ('succeeded', 'failed', 'skipped', 'cancelled', 'ignored'))) AS finished_at,
               arg_max(s.error, s.id * 100000 + s.idx) FILTER (WHERE s.error IS NOT NULL),
               any_value(e.workflow),
               to_timestamp(min(s.ts) FILTER (WHERE s.status = 'running')) AS started_at
        FROM b_steps AS s LEFT JOIN b_events AS e ON e.id = s.id
        WHERE s.task IS NOT NULL GROUP BY s.run_id, s.task)
    ON CONFLICT (run_id, task) DO UPDATE SET
        status = excluded.status,
        attempts = greatest(tasks.attempts, excluded.attempts),
        first_queued_at = {_TASK_MERGED["first_queued_at"]},
        finished_at = {_TASK_MERGED["finished_at"]},
        error = coalesce(excluded.error, tasks.error),
        workflow = coalesce(tasks.workflow, excluded.workflow),
        started_at = {_TASK_MERGED["started_at"]},
        sort_at = {_TASK_SORT_MERGED}
    """,
    # Tasks from the worker's reports: who ran the latest attempt. A fenced worker's late report of an
    # older attempt does not replace the worker of a newer one. (A report that overtakes the step that
    # queued its attempt creates the row; the step fills in the rest.)
    f"""
    INSERT INTO tasks (run_id, task, attempts, workflow, worker_id, started_at, sort_at)
    SELECT run_id, task, max(attempt), any_value(workflow),
           arg_max(worker_id, attempt::BIGINT * 10000000000 + id), min(ts) FILTER (WHERE kind = 'task.started'),
           {schema.task_sort("NULL", "min(ts) FILTER (WHERE kind = 'task.started')", "NULL")}
    FROM b_events
    WHERE kind IN ('task.started', 'task.succeeded', 'task.failed') AND task IS NOT NULL AND attempt IS NOT NULL
          AND worker_id IS NOT NULL
    GROUP BY run_id, task
    ON CONFLICT (run_id, task) DO UPDATE SET
        worker_id = CASE WHEN excluded.attempts >= coalesce(tasks.attempts, 0) THEN excluded.worker_id
                         ELSE coalesce(tasks.worker_id, excluded.worker_id) END,
        workflow = coalesce(tasks.workflow, excluded.workflow),
        started_at = {_TASK_MERGED["started_at"]},
        sort_at = {_TASK_SORT_MERGED}
    """,
    # Attempts from the engine's view: queued, running, and how each ended (retrying = this attempt failed).
    """
    INSERT INTO attempts (run_id, task, attempt, status, queued_at, started_at, finished_at, error)
    SELECT run_id, task, attempt,
           CASE arg_max(status, id * 100000 + idx) WHEN 'retrying' THEN 'failed'
                ELSE arg_max(status, id * 100000 + idx) END,
           to_timestamp(min(ts) FILTER (WHERE status = 'queued')),
           to_timestamp(min(ts) FILTER (WHERE status = 'running')),
           to_timestamp(max(ts) FILTER (WHERE status IN ('succeeded', 'failed', 'retrying', 'cancelled'))),
           arg_max(error, id * 100000 + idx) FILTER (WHERE error IS NOT NULL)
    FROM b_steps WHERE task IS NOT NULL AND attempt > 0 GROUP BY run_id, task, attempt
    ON CONFLICT (run_id, task, attempt) DO UPDATE SET
        status = excluded.status,
        queued_at = coalesce(attempts.queued_at, excluded.queued_at),
        started_at = coalesce(attempts.started_at, excluded.started_at),
        finished_at = coalesce(excluded.finished_at, attempts.finished_at),
        error = coalesce(excluded.error, attempts.error)
    """,
    # Attempts from the worker's reports: who ran it, what it returned, why it failed.
    """
    INSERT INTO attempts (run_id, task, attempt, status, started_at, worker_id, error_type, exit_code, result)
    SELECT run_id, task, attempt,
           CASE WHEN bool_or(kind = 'task.succeeded') THEN 'succeeded'
                WHEN bool_or(kind = 'task.failed') THEN 'failed' ELSE 'running' END,
           min(ts) FILTER (WHERE kind = 'task.started'),
           arg_max(worker_id, id),
           nullif(split_part(arg_max(payload->>'$.error', id) FILTER (WHERE kind = 'task.failed'), ':', 1), ''),
           coalesce(
               TRY_CAST(arg_max(payload->>'$.result.exit_code', id) FILTER (WHERE kind = 'task.succeeded') AS INTEGER),
               TRY_CAST(arg_max(payload->>'$.details.exit_code', id) FILTER (WHERE kind = 'task.failed') AS INTEGER)),
           arg_max(payload->'$.result', id) FILTER (WHERE kind = 'task.succeeded')
    FROM b_events WHERE kind IN ('task.started', 'task.succeeded', 'task.failed') AND attempt IS NOT NULL
    GROUP BY run_id, task, attempt
    ON CONFLICT (run_id, task, attempt) DO UPDATE SET
        status = CASE WHEN attempts.status IN ('succeeded', 'failed', 'cancelled') THEN attempts.status
                      ELSE excluded.status END,
        started_at = coalesce(attempts.started_at, excluded.started_at),
        worker_id = coalesce(excluded.worker_id, attempts.worker_id),
        error_type = coalesce(excluded.error_type, attempts.error_type),
        exit_code = coalesce(excluded.exit_code, attempts.exit_code),
        result = coalesce(excluded.result, attempts.result)
    """,
    """
    INSERT INTO workers (worker_id, first_seen, last_seen, results)
    SELECT worker_id, min(ts), max(ts),
           count(*) FILTER (WHERE kind IN ('task.succeeded', 'task.failed'))
    FROM b_events WHERE worker_id IS NOT NULL GROUP BY worker_id
    ON CONFLICT (worker_id) DO UPDATE SET
        first_seen = least(workers.first_seen, excluded.first_seen),
        last_seen = greatest(workers.last_seen, excluded.last_seen),
        results = workers.results + excluded.results
    """,
    # Files: one row per record of a file trigger, keyed by its event's id. Such a record names no task and
    # no worker and is no run.submitted or run.step, so none of the statements above takes it. TRY: a
    # sender's odd mtime leaves it NULL instead of failing the batch, which would stop the auditor.
    """
    INSERT INTO files (id, path, size, mtime, workflow, trigger, run_id, reason, seen_at)
    SELECT id, payload->>'$.path', TRY_CAST(payload->>'$.size' AS BIGINT),
           TRY(to_timestamp(TRY_CAST(payload->>'$.mtime' AS DOUBLE))), workflow, payload->>'$.trigger',
           nullif(run_id, ''), payload->>'$.reason', ts
    FROM b_events WHERE kind = 'file.seen' AND payload->>'$.path' IS NOT NULL
    ON CONFLICT (id) DO NOTHING
    """,
]


def _records(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or ()]
    return [
        {n: v.isoformat() if hasattr(v, "isoformat") else orjson.loads(v) if n == "payload" and v else v
         for n, v in zip(names, row, strict=True)}
        for row in cur.fetchall()
    ]  # fmt: skip


MAX_TASKS_PAGE = 500
"""The most task rows one page holds."""

TaskCursor = tuple[int, str, str]
"""Where a page of tasks ends: (sort time in epoch µs, run_id, task)."""


def encode_cursor(cursor: TaskCursor) -> str:
    """An opaque, URL-safe token for a task page's cursor (callers pass it back, never build it)."""
    return base64.urlsafe_b64encode(orjson.dumps(list(cursor))).decode().rstrip("=")


def decode_cursor(token: str) -> TaskCursor:
    """ValueError when `token` is not one `encode_cursor` made."""
    try:
        at, run_id, task = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise ValueError(f"'cursor' {token!r} is not a cursor this API gave out") from None
    if not (isinstance(at, int) and isinstance(run_id, str) and isinstance(task, str)):
        raise ValueError(f"'cursor' {token!r} is not a cursor this API gave out")
    return at, run_id, task


_EXPORT_DAY = {
    "events": "ts",
    "runs": "coalesce(created_at, started_at)",
    "tasks": "coalesce(first_queued_at, finished_at)",
    "attempts": "coalesce(queued_at, started_at)",
    "workers": None,
    "files": "seen_at",
    "alerts": "ts",
}
"""The column that files each table's rows by day in an export (None: one file)."""


def _schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version a file says it has; None when it says nothing (no meta table, or no row)."""
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except duckdb.CatalogException:
        return None
    return int(row[0]) if row else None


class AuditStore:
    """The DuckDB file, opened by its one writer; users' SQL runs on cursors of the same instance."""

    def __init__(self, path: Path, *, memory_limit: str = "1GB", threads: int = 2) -> None:
        self.path, self.memory_limit, self.threads = path, memory_limit, threads
        self._con: duckdb.DuckDBPyConnection | None = None
        self._workflows: dict[str, str] = {}
        """run id -> workflow name, for events that do not carry it."""
        self.rebuilt = False
        """True when this open found no usable file and started an empty one (to be filled from JD_EVENTS)."""

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("the audit store is not open")
        return self._con

    def open(self) -> AuditStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        try:
            con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            raise ConfigError(f"cannot open the audit log {self.path}: {exc}") from None
        version = _schema_version(con) if existed else None
        if existed and version is not None and version in schema.MIGRATIONS:
            version = self._migrate(con, version)
        if existed and version != schema.VERSION:
            con.close()
            log.warning(
                "audit log %s has schema %s, this jetdag writes %s: rebuilding it", self.path, version, schema.VERSION
            )
            self.path.unlink()
            self.path.with_name(self.path.name + ".wal").unlink(missing_ok=True)
            con = duckdb.connect(str(self.path))
            existed = False
        con.execute(schema.DDL)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", [str(schema.VERSION)])
        con.execute("CREATE TEMP TABLE b_events AS SELECT * FROM events LIMIT 0")
        con.execute("CREATE TEMP TABLE b_steps (id UBIGINT, idx INTEGER, run_id VARCHAR, task VARCHAR, "
                    "attempt INTEGER, status VARCHAR, ts DOUBLE, error VARCHAR)")  # fmt: skip
        query.lock_down(con, memory_limit=self.memory_limit, threads=self.threads)
        self._con = con
        self.rebuilt = not existed
        return self

    def _migrate(self, con: duckdb.DuckDBPyConnection, version: int) -> int:
        """Bring a file of an older schema up to date in place, one version per transaction: it may hold
        more history than JD_EVENTS still has, so rebuilding it would lose that. The version it reached."""
        while version in schema.MIGRATIONS:
            log.warning("audit log %s has schema %s: migrating it to %s", self.path, version, version + 1)
            con.execute("BEGIN")
            try:
                con.execute(schema.MIGRATIONS[version])
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", [str(version + 1)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            version += 1
        return version

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _name_workflows(self, events: list[dict[str, Any]]) -> None:
        """Only a submission names its workflow; the run's other events get the name from it.

        Kept in memory (a join per batch would grow with the log); runs submitted before this
        process started are looked up once, by key."""
        known = self._workflows
        for e in events:
            if e["kind"] == "run.submitted" and e["workflow"]:
                known[e["run_id"]] = e["workflow"]
        missing = list({e["run_id"] for e in events if e["workflow"] is None and e["run_id"] not in known})
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            cur = self.con.cursor()
            try:
                marks = ", ".join("?" * len(chunk))
                known.update(
                    cur.execute(f"SELECT run_id, workflow FROM runs WHERE run_id IN ({marks})", chunk).fetchall()
                )
            finally:
                cur.close()
        for e in events:
            if e["workflow"] is None:
                e["workflow"] = known.get(e["run_id"])
        if len(known) > 200_000:  # live runs are the recent ones: forget the oldest half
            for run_id in list(known)[:100_000]:
                del known[run_id]

    def last_id(self) -> int:
        """The highest event id stored: where the auditor's stream position stands in this file."""
        row = self.con.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return int(row[0]) if row else 0

    def ingest(self, messages: Sequence[Message]) -> int:
        """Store a batch in one transaction; returns how many events were new."""
        rows = to_rows(messages)
        if not rows.events:
            return 0
        self._name_workflows(rows.events)
        con = self.con
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM b_events")
            con.execute("DELETE FROM b_steps")
            con.execute(
                f"""INSERT INTO b_events
                SELECT r.id, to_timestamp(r.ts), r.run_id, r.workflow, r.task, r.attempt, r.kind, r.worker_id,
                       r.payload::JSON
                FROM (SELECT unnest(from_json(?::JSON, '[{_EVENT_COLUMNS}]')) AS r)
                WHERE r.id NOT IN (SELECT id FROM events WHERE id >= ?)""",
                # Ids are stream sequences, stored in order: the bound lets DuckDB skip all older row groups.
                [orjson.dumps(rows.events).decode(), min(e["id"] for e in rows.events)],
            )
            new = int(con.execute("SELECT count(*) FROM b_events").fetchone()[0])  # type: ignore[index]
            if new:
                con.execute("INSERT INTO events SELECT * FROM b_events")
                if rows.transitions:
                    con.execute(
                        f"""INSERT INTO b_steps SELECT r.* FROM
                        (SELECT unnest(from_json(?::JSON, '[{_TRANSITION_COLUMNS}]')) AS r)
                        WHERE r.id IN (SELECT id FROM b_events)""",
                        [orjson.dumps(rows.transitions).decode()],
                    )
                for statement in _APPLY:
                    con.execute(statement)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return new

    def prune(self, cutoff: dt.datetime) -> dict[str, int]:
        """Forget runs that finished before `cutoff`, with their tasks, attempts and events, and the files
        seen before it (with their file.seen events).

        Live runs are kept whatever their age, and so are their events. A file goes by its own age, not its
        run's: most files start no run, and their events (run_id '') belong to none."""
        con = self.con
        old = """run_id IN (SELECT run_id FROM runs WHERE finished_at < ?
                 AND status IN ('succeeded', 'failed', 'cancelled'))"""
        where = {
            "events": (f"{old} OR (kind = 'file.seen' AND ts < ?)", [cutoff, cutoff]),
            **{table: (old, [cutoff]) for table in ("attempts", "tasks", "alerts", "runs")},
            "files": ("seen_at < ?", [cutoff]),
        }
        removed: dict[str, int] = {}
        con.execute("BEGIN")
        try:
            for table, (condition, args) in where.items():
                row = con.execute(f"DELETE FROM {table} WHERE {condition}", args).fetchone()
                removed[table] = int(row[0]) if row else 0
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return removed

    def export(self, to: Path) -> list[str]:
        """Every table as Parquet under `to` (`<table>/day=YYYY-MM-DD/*.parquet` where rows have a day).

        The locked-down instance may not write files, so the file is closed, opened once without
        the lock for the copy, and opened locked again. The caller keeps ingest and queries away."""
        to.mkdir(parents=True, exist_ok=True)
        self.close()
        written: list[str] = []
        try:
            con = duckdb.connect(str(self.path))
            try:
                for table, day in _EXPORT_DAY.items():
                    target = (to / table).as_posix().replace("'", "''")
                    if day:
                        sql = f"""COPY (SELECT *, CAST({day} AS DATE) AS day FROM {table})
                                  TO '{target}' (FORMAT parquet, PARTITION_BY (day), OVERWRITE_OR_IGNORE)"""
                    else:
                        sql = f"COPY {table} TO '{target}.parquet' (FORMAT parquet)"
                    con.execute(sql)
                    written.append(f"{target}/" if day else f"{target}.parquet")
            finally:
                con.close()
        finally:
            self.open()
        return written

    def run_timings(self, run_id: str) -> tuple[dict[str, Any], dict[str, str], list[AttemptTiming]] | None:
        """The run's row, each task's status and every attempt's times (epoch seconds); None if unknown."""
        cur = self.con.cursor()
        try:
            row = cur.execute(
                "SELECT workflow, version, status, epoch(started_at), epoch(finished_at) FROM runs WHERE run_id = ?",
                [run_id],
            ).fetchone()
            if row is None:
                return None
            run = dict(zip(("workflow", "version", "status", "started_at", "finished_at"), row, strict=True))
            tasks = dict(cur.execute("SELECT task, status FROM tasks WHERE run_id = ?", [run_id]).fetchall())
            attempts = [
                AttemptTiming(*r)
                for r in cur.execute(
                    """SELECT task, attempt, status, epoch(queued_at), epoch(started_at), epoch(finished_at),
                              worker_id, error
                       FROM attempts WHERE run_id = ? ORDER BY task, attempt""",
                    [run_id],
                ).fetchall()
            ]
        finally:
            cur.close()
        return run, tasks, attempts

    def task_audit(self, run_id: str, task: str, after: int, limit: int) -> dict[str, Any]:
        """A task's attempts and one page of its events, keyset-paged by event id."""
        cur = self.con.cursor()
        try:
            cur.execute(
                """SELECT attempt, status, queued_at, started_at, finished_at, wait_ms, run_ms, worker_id,
                          error_type, error, exit_code
                   FROM attempts WHERE run_id = ? AND task = ? ORDER BY attempt""",
                [run_id, task],
            )
            attempts = _records(cur)
            cur.execute(
                """SELECT id, ts, kind, attempt, worker_id, payload FROM events
                   WHERE run_id = ? AND task = ? AND id > ?
                   ORDER BY id LIMIT ?""",
                [run_id, task, after, limit + 1],
            )
            events = _records(cur)
        finally:
            cur.close()
        more = len(events) > limit
        events = events[:limit]
        return {"attempts": attempts, "events": events, "next": events[-1]["id"] if more else None}

    def tasks(
        self,
        *,
        workflow: str | None = None,
        task: str | None = None,
        status: str | None = None,
        worker: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: TaskCursor | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """One page of task rows, newest first (by `tasks.sort_at`, see `schema.TASK_SORT`), filtered; `next`
        is the cursor of the page after it, or None.

        Keyset-paged on (sort time in µs, run_id, task), which is unique and total: a deep page costs what
        the first one does, where OFFSET would sort and skip everything before it. `since`/`until` are
        epoch seconds bounding the sort time (since inclusive, until exclusive)."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("workflow", workflow), ("task", task), ("status", status), ("worker_id", worker)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        # Bounds on the bare column, so that zone maps skip the row groups outside them.
        if since is not None:
            where.append("sort_at >= to_timestamp(?)")
            args.append(since)
        if until is not None:
            where.append("sort_at < to_timestamp(?)")
            args.append(until)
        if cursor is not None:
            where.append("sort_at <= make_timestamptz(?::BIGINT) AND (epoch_us(sort_at), run_id, task) < (?, ?, ?)")
            args.extend((cursor[0], *cursor))
        limit = max(1, min(limit, MAX_TASKS_PAGE))
        # Ordered by the column itself, not by an expression of it: the top-n's dynamic filter then reaches
        # the scan, which reads the row groups with the newest times first and skips the others. The
        # duration is computed on the page alone: date_diff is costly, and every row the scan passes to
        # the top-n would pay for it.
        order = "ORDER BY sort_at DESC, run_id DESC, task DESC"
        sql = f"""
            SELECT run_id, workflow, task, status, attempts, worker_id AS worker, first_queued_at AS queued_at,
                   started_at, finished_at,
                   date_diff('millisecond', coalesce(started_at, first_queued_at), finished_at) AS duration_ms,
                   error, epoch_us(sort_at) AS _at
            FROM (SELECT run_id, workflow, task, status, attempts, worker_id, first_queued_at, started_at,
                         finished_at, error, sort_at
                  FROM tasks {"WHERE " + " AND ".join(where) if where else ""}
                  {order} LIMIT ?)
            {order}"""
        cur = self.con.cursor()
        try:
            cur.execute(sql, [*args, limit + 1])
            rows = _records(cur)
        finally:
            cur.close()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor((rows[-1]["_at"], rows[-1]["run_id"], rows[-1]["task"])) if more else None
        for row in rows:
            del row["_at"]
        return {"tasks": rows, "next": next_cursor}

    def restore(self, source: Path) -> dict[str, int]:
        """Load an export (`export`'s directory) into this file, which must not be open elsewhere.

        Rows already present are kept; the auditor then goes on after the last restored event."""
        if self._con is not None:
            raise RuntimeError("restore works on a closed store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            raise ConfigError(f"cannot open {self.path} to restore into it (is an auditor running?): {exc}") from None
        loaded: dict[str, int] = {}
        try:
            # An existing file of an older schema is brought up to date first: DDL creates missing tables
            # only, and stamping the version over an old table's shape would break ingest later.
            version = _schema_version(con)
            if version is not None and version in schema.MIGRATIONS:
                version = self._migrate(con, version)
            if version is not None and version != schema.VERSION:
                raise ConfigError(
                    f"{self.path} has audit schema {version}, this jetdag writes {schema.VERSION}: "
                    "restore into a new file"
                )
            con.execute(schema.DDL)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", [str(schema.VERSION)])
            for table, day in _EXPORT_DAY.items():
                pattern = f"{table}/*/*.parquet" if day else f"{table}.parquet"
                if not list(source.glob(pattern)):
                    loaded[table] = 0
                    continue
                skip = ", ".join(("day",) * bool(day) + schema.GENERATED.get(table, ()))
                files = (source / pattern).as_posix().replace("'", "''")
                row = con.execute(
                    f"""INSERT OR IGNORE INTO {table} BY NAME
                        SELECT * {f"EXCLUDE ({skip})" if skip else ""}
                        FROM read_parquet('{files}', hive_partitioning = {str(bool(day)).lower()})"""
                ).fetchone()
                loaded[table] = int(row[0]) if row else 0
            # An export written before schema version 3 has no sort_at.
            con.execute(f"UPDATE tasks SET sort_at = {schema.TASK_SORT} WHERE sort_at IS NULL")
        finally:
            con.close()
        return loaded

    def counts(self) -> dict[str, int]:
        """Rows per table, for logs and tests (on a cursor of its own: ingest may be writing)."""
        cur = self.con.cursor()
        try:
            return {t: int(cur.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in schema.TABLES}  # type: ignore[index]
        finally:
            cur.close()
