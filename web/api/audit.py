"""The audit log over HTTP: read-only SQL, run summaries and a task's audit trail, all answered by the auditor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import get, post
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.params import FromPath, FromQuery, JSONBody

from jetdag.engine.client import Client


@dataclass
class SqlRequest:
    sql: str | None = None
    """One SELECT (or EXPLAIN) statement."""
    saved: str | None = None
    """Or the name of a saved query (GET /api/v1/sql/saved lists them)."""
    max_rows: int = 1000
    timeout: float = 10.0


@post("/api/v1/sql", status_code=200)
async def run_sql(state: State, data: JSONBody[SqlRequest]) -> dict[str, Any]:
    """`{"columns", "types", "rows", "truncated", "elapsed_ms"}`; 400 with the reason when the statement is refused."""
    client: Client = state.client
    if (data.sql is None) == (data.saved is None):
        raise ValidationException("give either 'sql' (one SELECT) or 'saved' (a saved query's name)")
    request = {
        "sql": data.sql,
        "saved": data.saved,
        "max_rows": max(1, min(data.max_rows, 10_000)),
        "timeout": max(0.1, min(data.timeout, 30.0)),
    }
    result: dict[str, Any] = await client.audit("sql", {k: v for k, v in request.items() if v is not None})
    return result


@get("/api/v1/sql/saved")
async def saved_queries(state: State) -> list[dict[str, str]]:
    """The saved queries: name, description and SQL."""
    client: Client = state.client
    saved: list[dict[str, str]] = await client.audit("saved")
    return saved


@get("/api/v1/runs/{run_id:str}/summary")
async def run_summary(state: State, run_id: FromPath[str]) -> dict[str, Any]:
    """Per-task wait and run times, stages, the critical path, retries and the task that caused a failure."""
    client: Client = state.client
    return await client.summary(run_id)


@get("/api/v1/runs/{run_id:str}/tasks/{task:str}/audit")
async def task_audit(
    state: State, run_id: FromPath[str], task: FromPath[str], after: FromQuery[int] = 0, limit: FromQuery[int] = 100
) -> dict[str, Any]:
    """A task's attempts and a page of its events, oldest first; pass `next` back as `after` for the next page."""
    client: Client = state.client
    return await client.task_audit(run_id, task, after=after, limit=max(1, min(limit, 1000)))
