"""The handlers every worker under the conformance suite has, for the Python reference worker:
`jetdag worker --import tests.conformance.handlers`. The Node worker has the same three built in.

- `echo`: the result is the payload;
- `fail`: fails, not retryable, with `payload["message"]` as the error;
- `sleep`: waits `payload["seconds"]` (an interrupt stops it), the result is None.

Import this module only in a worker process: it replaces jetdag's built-in `sleep` (engine/builtins.py, whose
result is `{"slept": seconds}`) with the suite's, in the process-wide handler registry.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from jetdag.engine.handlers import Fail, TaskContext, handler, unuse

unuse("sleep")  # the built-in one: the suite's `sleep` answers None


@handler("echo")
async def echo(ctx: TaskContext) -> Any:
    return ctx.payload


@handler("fail")
async def fail(ctx: TaskContext) -> NoReturn:
    message = ctx.payload.get("message") if isinstance(ctx.payload, dict) else None
    raise Fail("failed" if message is None else str(message))


@handler("sleep")
async def sleep(ctx: TaskContext) -> None:
    seconds = ctx.payload.get("seconds") if isinstance(ctx.payload, dict) else None
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise Fail("sleep: payload needs 'seconds' (a number >= 0)")
    await asyncio.sleep(seconds)  # wait-ok: what the handler is for; an interrupt cancels it here
