"""The dead letters page (`/dead-letters`): JD_DLQ newest first, with a requeue button per dead task."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Template

from jetdag.engine.client import Client, RequeueRefused
from jetdag.engine.errors import NotFound

from .tasks import wants_fragment


@get("/dead-letters", include_in_schema=False)
async def dead_letters_page(
    request: Request[Any, Any, Any],
    state: State,
    queue: FromQuery[str | None] = None,
    before: Annotated[int | None, QueryParameter(ge=1)] = None,
) -> Template:
    client: Client = state.client
    page = await client.dead_letters(queue=queue or None, before=before, limit=50)
    for letter in page["letters"]:
        stamp = letter["time"]
        letter["time_text"] = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if stamp else ""
    query = {"queue": queue} if queue else {}
    next_url = "/dead-letters?" + urlencode({**query, "before": page["next"]}) if page["next"] else None
    context = {"letters": page["letters"], "next_url": next_url, "queue": queue or "", "first_page": before is None,
               "first_url": "/dead-letters?" + urlencode(query)}  # fmt: skip
    name = "_dead_letters_table.html" if wants_fragment(request) else "dead_letters.html"
    return Template(template_name=name, context=context)


@post("/dead-letters/{seq:int}/requeue", include_in_schema=False, status_code=200)
async def requeue_page(state: State, seq: FromPath[int]) -> Template:
    """The row's answer in place of its button: the new run, or why it cannot run."""
    client: Client = state.client
    try:
        done = await client.requeue(seq)
        context: dict[str, Any] = {"ok": True, "run_id": done["run_id"], "message": None}
    except (RequeueRefused, NotFound) as exc:
        context = {"ok": False, "run_id": None, "message": str(exc)}
    return Template(template_name="_dead_letters_requeued.html", context=context)
