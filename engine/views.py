"""The JSON shape of a run, shared by `jetdag status --json`, the Client and GET /api/v1/runs/{id}."""

from __future__ import annotations

from typing import Any


def run_view(snapshot: dict[str, Any], *, tasks: bool = True) -> dict[str, Any]:
    """`{"run_id", "workflow", "status", ..., "tasks": {name: {"status", "attempts", ...}}}`."""
    view: dict[str, Any] = {
        "run_id": snapshot["run_id"],
        "workflow": snapshot["workflow"],
        "status": snapshot["status"],
        "version": snapshot["def_rev"],
        "params": snapshot["params"],
        "created_at": snapshot["created_at"],
        "started_at": snapshot["started_at"],
        "finished_at": snapshot["finished_at"],
        "error": snapshot["error"],
    }
    for key in ("rerun_of", "trigger", "logical_time", "meta", "start", "held"):
        if snapshot.get(key):
            view[key] = snapshot[key]
    if tasks:
        view["tasks"] = {name: task_view(t) for name, t in snapshot["tasks"].items()}
    return view


def task_view(task: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"status": task["status"], "attempts": task["attempt"]}
    for key in ("queued_at", "started_at", "finished_at", "worker", "error", "result"):
        if task.get(key) is not None:
            out[key] = task[key]
    return out
