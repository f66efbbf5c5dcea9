"""Overview (`/`): runs per state, workers alive, step records per second, recent runs; refreshed live."""

from __future__ import annotations

from collections import Counter
from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.response import ServerSentEvent, Template

from jetdag.engine.client import Client
from jetdag.web.live import Hub, fragment_stream

from .common import RUN_STATES, render, run_row, sparkline

RECENT = 500  # the runs the state cards count: the newest ones, so the page stays cheap on a big history


async def _context(client: Client, hub: Hub) -> dict[str, Any]:
    runs = await client.runs_list(limit=RECENT)
    counts = Counter(r["status"] for r in runs)
    workers = await client.workers()
    alive = sum(1 for w in workers if w.get("alive"))
    rates = hub.rates(seconds=300, bucket=5)
    return {
        "states": [(s, counts.get(s, 0)) for s in RUN_STATES],
        "total": len(runs),
        "workers_alive": alive,
        "workers_total": len(workers),
        "spark": sparkline(rates),
        "rate_now": rates[-1] if rates else 0.0,
        "rate_max": max(rates, default=0.0),
        "recent": [run_row(r) for r in runs[:10]],
    }


@get("/", include_in_schema=False)
async def overview(state: State) -> Template:
    return Template(template_name="overview.html", context=await _context(state.client, state.hub))


@get("/live/overview", include_in_schema=False)
async def overview_live(state: State, request: Request[Any, Any, Any]) -> ServerSentEvent:
    client: Client = state.client
    hub: Hub = state.hub

    async def cards() -> str:
        return render(request, "_overview_live.html", await _context(client, hub))

    return ServerSentEvent(fragment_stream(hub, cards, event="overview", min_interval=2.0))
