"""The workers page (`/workers`): heartbeats from KV `jd_workers`; the table refreshes itself every 3 s."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.response import Template

from jetdag.engine.client import Client

from .tasks import wants_fragment


@get("/workers", include_in_schema=False)
async def workers_page(request: Request[Any, Any, Any], state: State) -> Template:
    client: Client = state.client
    error = None
    workers: list[dict[str, Any]] = []
    try:
        workers = await client.workers()
    except Exception as exc:  # NATS not answering: say so in place of the table, and keep polling
        error = f"cannot read the workers' heartbeats: {type(exc).__name__}: {exc}"
    name = "_workers_table.html" if wants_fragment(request) else "workers.html"
    return Template(template_name=name, context={"workers": workers, "error": error})
