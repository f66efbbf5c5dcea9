"""Dead letters (stream JD_DLQ): list them newest first, and run a dead task again."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get, post
from litestar.datastructures import State
from litestar.exceptions import ClientException
from litestar.params import FromPath, FromQuery, QueryParameter

from jetdag.engine.client import Client, RequeueRefused


@get("/api/v1/dead-letters")
async def list_dead_letters(
    state: State,
    queue: FromQuery[str | None] = None,
    before: Annotated[int | None, QueryParameter(ge=1)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """`{"letters": [...], "next": seq or null}` newest first; `queue` keeps one queue (`_invalid`: malformed
    messages); pass `next` back as `before` for the next page. A letter: seq, queue, time, kind (`task.dead`
    or `invalid`), reason, and for a dead task run, workflow, task, attempt, ts; `requeueable`."""
    client: Client = state.client
    return await client.dead_letters(queue=queue or None, before=before, limit=limit)


@post("/api/v1/dead-letters/{seq:int}/requeue", status_code=200)
async def requeue_dead_letter(state: State, seq: FromPath[int]) -> dict[str, Any]:
    """Run the dead task again as a run of its own (see README) and delete the letter: `{"seq", "run_id",
    "queue", "handler"}`. 400 with the reason for a letter that cannot run (`_invalid`); 404 for an unknown seq."""
    client: Client = state.client
    try:
        return await client.requeue(seq)
    except RequeueRefused as exc:
        raise ClientException(str(exc)) from None
