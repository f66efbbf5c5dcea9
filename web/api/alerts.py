"""GET /api/v1/alerts: the audit log's `alerts` table, newest first (filled by the alerter once it exists)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.datastructures import State
from litestar.params import QueryParameter

from jetdag.engine.client import Client


async def audit_rows(client: Client, sql: str, limit: int) -> list[dict[str, Any]]:
    """The rows of one read-only SELECT as objects (column name -> value)."""
    result = await client.sql(sql, max_rows=limit)
    columns = result["columns"]
    return [dict(zip(columns, row, strict=True)) for row in result["rows"]]


async def recent_alerts(client: Client, limit: int) -> list[dict[str, Any]]:
    return await audit_rows(
        client, "SELECT id, ts, run_id, task, kind, message, sent_to FROM alerts ORDER BY ts DESC, id", limit
    )


async def recent_files(client: Client, limit: int, workflow: str | None = None) -> list[dict[str, Any]]:
    """The files that file triggers saw, newest first: the run each started (run_id) or why none (reason)."""
    # The SQL service takes no parameters, so the name goes in as a literal: quotes doubled, which is all
    # escaping a DuckDB string needs (backslashes are plain characters), and the query runs read-only anyway.
    quoted = workflow.replace("'", "''") if workflow else None
    where = f"WHERE workflow = '{quoted}'" if quoted is not None else ""
    sql = f"""SELECT id, seen_at, strftime(timezone('UTC', seen_at), '%Y-%m-%d %H:%M:%S') AS seen_utc, path, size,
                     mtime, workflow, trigger, run_id, reason
              FROM files {where} ORDER BY seen_at DESC, id DESC"""
    return await audit_rows(client, sql, limit)


@get("/api/v1/alerts")
async def list_alerts(
    state: State, limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100
) -> list[dict[str, Any]]:
    """Alerts newest first: id, ts, run_id, task, kind, message, sent_to. Empty until alerts are configured."""
    client: Client = state.client
    return await recent_alerts(client, limit)
