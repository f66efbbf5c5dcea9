"""GET /api/v1/workers: the workers by their heartbeats (the shape of `jetdag workers --json`)."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State

from jetdag.engine.client import Client


@get("/api/v1/workers")
async def list_workers(state: State) -> list[dict[str, Any]]:
    """Each worker: id, host, pid, queues, running attempts, age of its last beat, alive or presumed dead."""
    client: Client = state.client
    return await client.workers()
