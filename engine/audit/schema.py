"""The audit log's tables. `events` is the raw truth; the others are kept current from it.

Every event has the JD_EVENTS stream sequence as its id: the same message redelivered, or read
again when the file is rebuilt, has the same id, so ingest is idempotent by an anti-join.
"""

from __future__ import annotations

from typing import Final

VERSION: Final = 4
"""Bumped when a table changes shape. A file of a version in MIGRATIONS is brought up to date in
place (it may hold more history than JD_EVENTS still has); any other version is rebuilt from JD_EVENTS."""

TABLES: Final = ("events", "runs", "tasks", "attempts", "workers", "files", "alerts")

GENERATED: Final = {"runs": ("duration_ms",), "tasks": ("elapsed_ms",), "attempts": ("wait_ms", "run_ms")}
"""Computed columns: exported for readers, never written back."""

DDL: Final = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);

CREATE TABLE IF NOT EXISTS events (
    id        UBIGINT PRIMARY KEY,   -- JD_EVENTS stream sequence
    ts        TIMESTAMPTZ NOT NULL,  -- when it happened (the sender's clock)
    run_id    VARCHAR NOT NULL,
    workflow  VARCHAR,
    task      VARCHAR,
    attempt   INTEGER,
    kind      VARCHAR NOT NULL,      -- run.submitted, task.started, task.succeeded, task.failed, task.due,
                                     -- run.deadline, run.step, task.progress, task.audit, task.checkpoint,
                                     -- file.seen (run_id '' when the file started no run)
    worker_id VARCHAR,
    payload   JSON                   -- the whole message, for json_extract and ->>
);

CREATE TABLE IF NOT EXISTS runs (
    run_id       VARCHAR PRIMARY KEY,
    workflow     VARCHAR,
    version      INTEGER,            -- the definition version the run started with
    status       VARCHAR,            -- pending, running, paused, succeeded, failed, cancelled
    params       JSON,
    meta         JSON,
    logical_time TIMESTAMPTZ,
    created_at   TIMESTAMPTZ,
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    error        VARCHAR,
    duration_ms  BIGINT GENERATED ALWAYS AS (date_diff('millisecond', started_at, finished_at)) VIRTUAL
);

CREATE TABLE IF NOT EXISTS tasks (
    run_id          VARCHAR,
    task            VARCHAR,
    status          VARCHAR,  -- waiting, queued, running, succeeded, retrying, failed, skipped, cancelled, ignored
    attempts        INTEGER,
    first_queued_at TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    error           VARCHAR,
    elapsed_ms      BIGINT GENERATED ALWAYS AS (date_diff('millisecond', first_queued_at, finished_at)) VIRTUAL,
    -- Version 2, last so that a migrated file (ALTER TABLE … ADD COLUMN) has the same column order.
    -- Kept here rather than joined from runs/attempts so the tasks page filters and pages one table.
    workflow        VARCHAR,
    worker_id       VARCHAR,         -- who ran the latest attempt
    started_at      TIMESTAMPTZ,     -- when its first attempt started running
    -- Version 3: the tasks page's order (TASK_SORT) stored, so its top-n reads the newest row groups only.
    sort_at         TIMESTAMPTZ,
    PRIMARY KEY (run_id, task)
);

CREATE TABLE IF NOT EXISTS attempts (
    run_id      VARCHAR,
    task        VARCHAR,
    attempt     INTEGER,
    status      VARCHAR,             -- queued, running, succeeded, failed, cancelled
    queued_at   TIMESTAMPTZ,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    worker_id   VARCHAR,
    error_type  VARCHAR,             -- ValueError, TimeoutError, TemplateError … (the text before the first ':')
    error       VARCHAR,
    exit_code   INTEGER,             -- the command handler's exit code
    result      JSON,
    wait_ms     BIGINT GENERATED ALWAYS AS (date_diff('millisecond', queued_at, started_at)) VIRTUAL,
    run_ms      BIGINT GENERATED ALWAYS AS (date_diff('millisecond', started_at, finished_at)) VIRTUAL,
    PRIMARY KEY (run_id, task, attempt)
);

CREATE TABLE IF NOT EXISTS workers (
    worker_id  VARCHAR PRIMARY KEY,
    first_seen TIMESTAMPTZ,
    last_seen  TIMESTAMPTZ,
    results    BIGINT                -- task results it reported
);

CREATE TABLE IF NOT EXISTS files (    -- filled by file triggers: each file seen, the run it started or why none
    id       UBIGINT PRIMARY KEY,   -- JD_EVENTS sequence of its file.seen record
    path     VARCHAR,
    size     BIGINT,                -- bytes
    mtime    TIMESTAMPTZ,
    workflow VARCHAR,
    trigger  VARCHAR,               -- which of the workflow's triggers: files, files:load …
    run_id   VARCHAR,               -- NULL when it started none
    reason   VARCHAR,               -- why none: the schedule is off, present before the trigger was installed …
    seen_at  TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS alerts (   -- filled by the alerter
    id       VARCHAR PRIMARY KEY,
    ts       TIMESTAMPTZ,
    run_id   VARCHAR,
    task     VARCHAR,
    kind     VARCHAR,
    message  VARCHAR,
    sent_to  JSON
);
"""


def task_sort(finished_at: str, started_at: str, first_queued_at: str) -> str:
    """SQL for a task's sort time from SQL for its three times: when it ended, else started, else was
    queued; the epoch when it has none of them, so the sort time is never NULL."""
    return f"coalesce({finished_at}, {started_at}, {first_queued_at}, TIMESTAMPTZ '1970-01-01 00:00:00+00')"


TASK_SORT: Final = task_sort("finished_at", "started_at", "first_queued_at")
"""What `tasks.sort_at` holds, and so the tasks page's order (newest first, then run_id, task).

Every upsert of a task row in ingest writes it, and MIGRATIONS[2] fills it in a version 2 file. The page
orders by the bare column, not by this expression: DuckDB (2.0) then reads the row groups whose zone maps
hold the newest times first and pushes the top-n's threshold into the scan as a dynamic filter, so the
other row groups are skipped (EXPLAIN ANALYZE on 1M rows: 1 or 2 of 10 row groups read). Ordered by the
expression, it computed it for every row and kept a top-n over all of them. This works because rows are
appended about in time order: a row group holding a task that ended long after it was queued keeps a
late maximum and is read too. No ART index: DuckDB uses one for point lookups only, and it would slow
every upsert (bench/tasks_page.py, bench/RESULTS.md "tasks page")."""


MIGRATIONS: Final = {
    1: """
    ALTER TABLE tasks ADD COLUMN workflow VARCHAR;
    ALTER TABLE tasks ADD COLUMN worker_id VARCHAR;
    ALTER TABLE tasks ADD COLUMN started_at TIMESTAMPTZ;
    UPDATE tasks SET workflow = runs.workflow FROM runs WHERE tasks.run_id = runs.run_id;
    UPDATE tasks SET worker_id = a.worker_id, started_at = a.started_at
    FROM (SELECT run_id, task, arg_max(worker_id, attempt) FILTER (WHERE worker_id IS NOT NULL) AS worker_id,
                 min(started_at) AS started_at
          FROM attempts GROUP BY run_id, task) AS a
    WHERE tasks.run_id = a.run_id AND tasks.task = a.task;
    """,
    2: f"""
    ALTER TABLE tasks ADD COLUMN sort_at TIMESTAMPTZ;
    UPDATE tasks SET sort_at = {TASK_SORT};
    """,
    # Version 3's files table (path, run_id, workflow, seen_at) was never written by anything, so it is
    # dropped rather than converted. Spelled out rather than taken from DDL: a migration must keep
    # making version 4's shape when DDL moves on.
    3: """
    DROP TABLE IF EXISTS files;
    CREATE TABLE files (
        id       UBIGINT PRIMARY KEY,
        path     VARCHAR,
        size     BIGINT,
        mtime    TIMESTAMPTZ,
        workflow VARCHAR,
        trigger  VARCHAR,
        run_id   VARCHAR,
        reason   VARCHAR,
        seen_at  TIMESTAMPTZ
    );
    """,
}
"""From a version to the next, applied in one transaction when a file is opened."""
