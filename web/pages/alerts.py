"""The alerts (`/alerts`) and files (`/files`) pages: the audit log's `alerts` and `files` tables.

Both stay empty until the alerter and file triggers exist; the pages say so rather than show an empty grid."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State
from litestar.response import Template

from jetdag.engine.client import Client
from jetdag.engine.errors import AuditError, AuditUnavailable

from ..api.alerts import recent_alerts, recent_files

ROWS = 200


async def _rows(client: Client, which: str) -> tuple[list[dict[str, Any]], str | None]:
    try:
        return (await (recent_alerts if which == "alerts" else recent_files)(client, ROWS)), None
    except (AuditError, AuditUnavailable) as exc:
        return [], str(exc)


@get("/alerts", include_in_schema=False)
async def alerts_page(state: State) -> Template:
    rows, error = await _rows(state.client, "alerts")
    return Template(template_name="alerts.html", context={"alerts": rows, "error": error})


@get("/files", include_in_schema=False)
async def files_page(state: State) -> Template:
    rows, error = await _rows(state.client, "files")
    return Template(template_name="files.html", context={"files": rows, "error": error})
