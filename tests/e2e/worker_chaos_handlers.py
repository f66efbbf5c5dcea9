"""Handlers for the worker chaos tests: `jetdag worker --import tests.e2e.worker_chaos_handlers` (cwd: the repo)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from jetdag.engine.handlers import TaskContext, handler


@handler("t_chaos_hold")
async def hold(ctx: TaskContext) -> dict[str, Any]:
    """Attempt 1 holds until the file `<dir>/release` exists (or its worker is killed); later attempts return at once.

    The result names the attempt and the worker process that produced it.
    """
    if ctx.attempt == 1:
        release = Path(ctx.payload["dir"]) / "release"
        while not release.exists():  # noqa: ASYNC110  (the test creates it from another process: no event)
            await asyncio.sleep(0.02)  # wait-ok: a handler's simulated work
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@handler("t_chaos_resume")
async def resume(ctx: TaskContext) -> dict[str, Any]:
    """Attempt 1 saves a checkpoint, then holds until its worker is killed; a later attempt says what it resumed
    from."""
    if ctx.attempt == 1:
        ctx.checkpoint(rows=300)
        await asyncio.Event().wait()  # never set: the attempt ends with its worker's kill -9
    return {"attempt": ctx.attempt, "resumed_from": ctx.last_checkpoint}
