"""Schedules: whether a workflow's triggers may start runs, and when its clock fires next.

`GET /api/v1/schedules` lists every scheduled workflow's; `POST /api/v1/schedules/{name}/toggle` switches one
(optional body `{"enabled": bool}` sets it instead); 404 for an unknown workflow, 400 for one that nothing but
people start.
"""

from __future__ import annotations

from typing import Any

from litestar import get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK

from jetdag.engine.client import Client
from jetdag.engine.errors import ControlError

from .control import BY


@get("/api/v1/schedules")
async def list_schedules(state: State) -> list[dict[str, Any]]:
    """Every workflow a trigger starts, by name, each as `GET /api/v1/schedules/{name}` shows it."""
    client: Client = state.client
    return await client.scheduled()


@get("/api/v1/schedules/{name:str}")
async def get_schedule(state: State, name: FromPath[str]) -> dict[str, Any]:
    """`{workflow, scheduled, enabled, next_fire, last_fire, changed_by, changed_at, triggers}`; next_fire only
    while on. Each trigger: `{key, kind, what, timezone, catchup, overlap, next_fire, last_fire, runs, buffered,
    skipped, last_skip}`."""
    client: Client = state.client
    return await client.schedule(name)


@post("/api/v1/schedules/{name:str}/toggle", status_code=HTTP_200_OK)
async def toggle_schedule(
    state: State, name: FromPath[str], data: JSONBody[dict[str, Any] | None] = None
) -> dict[str, Any]:
    """Switch the workflow's schedule on or off; while off its triggers start no runs (Run now still does)."""
    enabled = (data or {}).get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ControlError(f"'enabled' must be true or false, got {enabled!r}")
    client: Client = state.client
    return await client.toggle_schedule(name, enabled, by=BY)
