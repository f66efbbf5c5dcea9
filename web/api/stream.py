"""`GET /api/v1/stream`: step records as JSON server-sent events, filtered by run or workflow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from litestar import Request, get
from litestar.datastructures import State
from litestar.params import FromQuery
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from jetdag.engine.client import Client
from jetdag.engine.errors import NotFound
from jetdag.web.live import PING_SECONDS, Hub


async def _resync(client: Client, run: str | None, workflow: str | None) -> dict[str, Any]:
    """What a reconnecting client missed, as current state: the run's view, or the newest runs."""
    if run:
        try:
            return {"run": await client.status(run)}
        except NotFound:
            return {"run": None}
    return {"runs": await client.runs_list(workflow=workflow, limit=100)}


def _step_json(item: dict[str, Any]) -> str:
    """The step's JSON, encoded once for all the clients it goes to (the hub hands each the same dict)."""
    encoded = item.get("_json")
    if encoded is None:
        data = {k: item.get(k) for k in ("run", "workflow", "seq", "status", "transitions")}
        encoded = item["_json"] = orjson.dumps(data).decode()
    return str(encoded)


async def _events(
    hub: Hub, client: Client, run: str | None, workflow: str | None, last_event_id: str | None
) -> AsyncIterator[ServerSentEventMessage]:
    sub = hub.subscribe(run=run, workflow=workflow)  # before the resync, so nothing falls between the two
    try:
        if last_event_id is not None:
            state = await _resync(client, run, workflow)
            yield ServerSentEventMessage(data=orjson.dumps(state).decode(), event="resync", id=hub.last_id or None)
        while True:
            try:
                item = await sub.next(PING_SECONDS)
            except TimeoutError:
                yield ServerSentEventMessage(comment="ping")
                continue
            if item is None:  # dropped as too slow, or the server is stopping: the client reconnects
                return
            yield ServerSentEventMessage(data=_step_json(item), event="step", id=f"{item['run']}:{item['seq']}")
    finally:
        hub.unsubscribe(sub)


@get("/api/v1/stream")
async def stream(
    state: State,
    request: Request[Any, Any, Any],
    workflow: FromQuery[str | None] = None,
    run: FromQuery[str | None] = None,
) -> ServerSentEvent:
    """Server-sent events, one `step` event per step record: `{run, workflow, seq, status, transitions}`, id
    `<run>:<seq>`. A reconnect (Last-Event-ID) first gets a `resync` event with the current state, since
    history is not replayed. A client that falls 256 events behind is disconnected."""
    hub: Hub = state.hub
    last = request.headers.get("last-event-id")
    return ServerSentEvent(_events(hub, state.client, run, workflow, last))
