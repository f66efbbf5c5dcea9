"""The alerts (`/alerts`) and files (`/files`) pages: the audit log's `alerts` and `files` tables.

Alerts stay empty until the alerter exists; files fill as file triggers see files. An empty page says why
rather than show an empty grid."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State
from litestar.params import FromQuery
from litestar.response import Template

from jetdag.engine.client import Client
from jetdag.engine.errors import AuditError, AuditUnavailable

from ..api.alerts import recent_alerts, recent_files

ROWS = 200


async def _rows(client: Client, which: str, workflow: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    try:
        if which == "alerts":
            return await recent_alerts(client, ROWS), None
        return await recent_files(client, ROWS, workflow), None
    except (AuditError, AuditUnavailable) as exc:
        return [], str(exc)


@get("/alerts", include_in_schema=False)
async def alerts_page(state: State) -> Template:
    rows, error = await _rows(state.client, "alerts")
    return Template(template_name="alerts.html", context={"alerts": rows, "error": error})


@get("/files", include_in_schema=False)
async def files_page(state: State, workflow: FromQuery[str | None] = None) -> Template:
    """The newest files file triggers saw, each with the run it started or why it started none."""
    rows, error = await _rows(state.client, "files", workflow or None)
    context = {"files": rows, "error": error, "workflow": workflow or "", "limit": ROWS}
    return Template(template_name="files.html", context=context)
