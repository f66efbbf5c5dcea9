"""The audit log's tables. `events` is the raw truth; the others are kept current from it.

Every event has the JD_EVENTS stream sequence as its id: the same message redelivered, or read
again when the file is rebuilt, has the same id, so ingest is idempotent by an anti-join.
"""

from __future__ import annotations

from typing import Final

VERSION: Final = 1
"""Bumped when a table changes shape; an older file is rebuilt from JD_EVENTS."""

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
                                     -- run.deadline, run.step, task.progress, task.audit, task.checkpoint
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

CREATE TABLE IF NOT EXISTS files (    -- filled by file triggers: which file started which run
    path     VARCHAR,
    run_id   VARCHAR,
    workflow VARCHAR,
    seen_at  TIMESTAMPTZ,
    PRIMARY KEY (path, run_id)
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
