"""The tasks page (`/tasks`): task history from the audit log, filtered, keyset-paged.

A plain GET renders the whole page; htmx's requests (the filter form, the next-page link) get the table
fragment alone, and push the URL so the browser's history and a reload show the same page."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, get
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter
from litestar.response import Template

from jetdag.engine.client import Client
from jetdag.engine.errors import AuditError, AuditUnavailable

from ..api.tasks import MAX_LIMIT, task_filters

STATUSES = ("queued", "running", "retrying", "succeeded", "failed", "skipped", "cancelled", "ignored", "waiting")


def wants_fragment(request: Request[Any, Any, Any]) -> bool:
    """True for htmx's own requests (a swap), false for a page load, a reload or a boosted link."""
    return request.headers.get("hx-request") == "true" and request.headers.get("hx-boosted") != "true"


@get("/tasks", include_in_schema=False)
async def tasks_page(
    request: Request[Any, Any, Any],
    state: State,
    workflow: FromQuery[str | None] = None,
    task: FromQuery[str | None] = None,
    status: FromQuery[str | None] = None,
    worker: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 50,
) -> Template:
    client: Client = state.client
    form = {"workflow": workflow, "task": task, "status": status, "worker": worker, "since": since, "until": until}
    form = {k: v for k, v in form.items() if v}
    page: dict[str, Any] = {"tasks": [], "next": None}
    error = None
    try:
        page = await client.tasks(
            **task_filters(workflow, task, status, worker, since, until), cursor=cursor or None, limit=limit
        )
    except (AuditError, AuditUnavailable) as exc:
        error = str(exc)
    next_url = "/tasks?" + urlencode({**form, "limit": limit, "cursor": page["next"]}) if page["next"] else None
    context = {"tasks": page["tasks"], "next_url": next_url, "error": error, "form": form, "statuses": STATUSES,
               "first_page": cursor is None, "first_url": "/tasks?" + urlencode(form)}  # fmt: skip
    name = "_tasks_table.html" if wants_fragment(request) else "tasks.html"
    return Template(template_name=name, context=context)
