"""GET /api/v1/tasks: task history from the audit log, filtered, newest first, keyset-paged."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from litestar import get
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.params import FromQuery, QueryParameter

from jetdag.engine.client import Client

MAX_LIMIT = 500


def parse_time(name: str, value: str | None) -> float | None:
    """Epoch seconds from epoch seconds or ISO 8601 (a time without a zone is UTC: what a browser's
    datetime-local input sends); ValidationException naming the parameter otherwise."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationException(
            f"{name!r} must be epoch seconds or ISO 8601, got {value!r}",
            extra=[{"key": name, "message": "expected epoch seconds or ISO 8601", "source": "query"}],
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def task_filters(
    workflow: str | None,
    task: str | None,
    status: str | None,
    worker: str | None,
    since: str | None,
    until: str | None,
) -> dict[str, Any]:
    """The filters `Client.tasks` takes, from query parameters; an empty one (a blank form field) is no filter."""
    return {
        "workflow": workflow or None,
        "task": task or None,
        "status": status or None,
        "worker": worker or None,
        "since": parse_time("since", since),
        "until": parse_time("until", until),
    }


@get("/api/v1/tasks")
async def list_tasks(
    state: State,
    workflow: FromQuery[str | None] = None,
    task: FromQuery[str | None] = None,
    status: FromQuery[str | None] = None,
    worker: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 100,
) -> dict[str, Any]:
    """Tasks newest first (by when they finished, else started, else were queued): run_id, workflow, task,
    status, attempts, worker, queued/started/finished_at, duration_ms, error. `since`/`until` take epoch
    seconds or ISO 8601; pass `next` back as `cursor` for the next page; `limit` 1..500."""
    client: Client = state.client
    filters = task_filters(workflow, task, status, worker, since, until)
    return await client.tasks(**filters, cursor=cursor or None, limit=limit)
