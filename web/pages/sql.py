"""The SQL page (`/sql`): a query box over the audit log, saved queries, results inline, and CSV."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from litestar import Response, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromQuery
from litestar.response import Template

from jetdag.engine.client import Client
from jetdag.engine.errors import AuditError, AuditUnavailable

PAGE_ROWS = 1000
"""Rows shown on the page; the CSV download takes up to CSV_ROWS."""
CSV_ROWS = 10_000


@get("/sql", include_in_schema=False)
async def sql_page(state: State, q: FromQuery[str | None] = None) -> Template:
    client: Client = state.client
    saved: list[dict[str, str]] = []
    error = None
    try:
        saved = await client.audit("saved")
    except (AuditError, AuditUnavailable) as exc:
        error = str(exc)
    context: dict[str, Any] = {"saved": saved, "q": q or "", "error": error, "result": None}
    if q and error is None:
        context.update(await _run(client, q))
    return Template(template_name="sql.html", context=context)


@post("/sql", include_in_schema=False, status_code=200)
async def sql_run(
    state: State, data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Template:
    """The form's answer: a results table, or the reason the statement was refused, in place."""
    client: Client = state.client
    return Template(template_name="_sql_result.html", context=await _run(client, data.get("q", "")))


async def _run(client: Client, q: str) -> dict[str, Any]:
    if not q.strip():
        return {"q": q, "result": None, "error": "write a SELECT first", "csv_url": None}
    try:
        result = await client.sql(q, max_rows=PAGE_ROWS)
    except (AuditError, AuditUnavailable) as exc:
        return {"q": q, "result": None, "error": str(exc), "csv_url": None}
    return {"q": q, "result": result, "error": None, "csv_url": "/sql.csv?" + urlencode({"q": q})}


@get("/sql.csv", include_in_schema=False)
async def sql_csv(state: State, q: FromQuery[str]) -> Response[str]:
    """The query's rows as CSV (header line first, up to 10,000 rows); 400 with the reason when refused."""
    client: Client = state.client
    result = await client.sql(q, max_rows=CSV_ROWS)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(result["columns"])
    writer.writerows([_cell(v) for v in row] for row in result["rows"])
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="jetdag-query.csv"'},
    )


def _cell(value: Any) -> Any:
    # Lists and maps (JSON columns) as JSON text, not Python's repr.
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value
