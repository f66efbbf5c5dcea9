"""Run control over HTTP: cancel, pause, resume, ignore a task (202), rerun (201 with the new run's id).

404 for an unknown run, 400 with the reason for a request that cannot apply (ControlError).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED

from jetdag.engine.client import Client
from jetdag.engine.errors import ControlError

BY = "http"
"""Who asked, in the run's record: the API has no users yet."""


def control_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    return Response({"detail": str(exc)}, status_code=400)


def _text(body: dict[str, Any] | None, key: str) -> str | None:
    value = (body or {}).get(key)
    if value is not None and not isinstance(value, str):
        raise ControlError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _requested(run_id: str, verb: str) -> dict[str, str]:
    return {"run_id": run_id, "requested": verb}


@post("/api/v1/runs/{run_id:str}/cancel", status_code=HTTP_202_ACCEPTED)
async def cancel_run(
    state: State, run_id: FromPath[str], data: JSONBody[dict[str, Any] | None] = None
) -> dict[str, str]:
    """Cancel the run (optional body `{"reason"}`): unfinished tasks are cancelled, running handlers interrupted."""
    client: Client = state.client
    await client.cancel(run_id, _text(data, "reason") or "", by=BY)
    return _requested(run_id, "cancel")


@post("/api/v1/runs/{run_id:str}/pause", status_code=HTTP_202_ACCEPTED)
async def pause_run(state: State, run_id: FromPath[str]) -> dict[str, str]:
    """Pause the run: nothing new is dispatched; running tasks finish."""
    client: Client = state.client
    await client.pause(run_id, by=BY)
    return _requested(run_id, "pause")


@post("/api/v1/runs/{run_id:str}/resume", status_code=HTTP_202_ACCEPTED)
async def resume_run(state: State, run_id: FromPath[str]) -> dict[str, str]:
    """Resume a paused run: every task that became ready is dispatched."""
    client: Client = state.client
    await client.resume(run_id, by=BY)
    return _requested(run_id, "resume")


@post("/api/v1/runs/{run_id:str}/tasks/{task:str}/ignore", status_code=HTTP_202_ACCEPTED)
async def ignore_task(
    state: State, run_id: FromPath[str], task: FromPath[str], data: JSONBody[dict[str, Any] | None] = None
) -> dict[str, str]:
    """Mark a failed (or retrying) task ignored (optional body `{"reason"}`): it counts as a success for its
    children, and the run goes on."""
    client: Client = state.client
    await client.ignore(run_id, task, reason=_text(data, "reason") or "", by=BY)
    return _requested(run_id, "ignore")


@post("/api/v1/runs/{run_id:str}/rerun")
async def rerun_run(
    state: State, run_id: FromPath[str], data: JSONBody[dict[str, Any] | None] = None
) -> dict[str, str]:
    """Start a new run of a finished run (optional body `{"from": task}`); answers the new run's id (201)."""
    client: Client = state.client
    return {"run_id": await client.rerun(run_id, _text(data, "from"))}


CONTROL = [cancel_run, pause_run, resume_run, ignore_task, rerun_run]
