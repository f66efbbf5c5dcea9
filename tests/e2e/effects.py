"""Handlers for the engine chaos tests: every execution leaves one line in a file, its observable effect.

Importable in the test process (an in-process worker) and by `jetdag worker --import tests.e2e.effects`
run from the repository root. The payload says where to write and how to behave:

    {"log": PATH, "sleep": SECONDS, "jitter": SECONDS, "retry_one_in": N, "retry_delay": SECONDS}

A line is `{"run", "task", "attempt", "dispatch", "outcome", "pid", "ts"}` where `dispatch` is the attempt's
identity `<run>:<task>:<attempt>` (the engine publishes the task with Nats-Msg-Id `<dispatch>:task`) and
`outcome` is `retry` (the handler asked to be tried again) or `ok` (it returned). Lines are written with one
`write` on an `O_APPEND` descriptor, so concurrent executions, threads or processes never interleave them.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

from jetdag.engine.handlers import Retry, TaskContext, handler


def unit(*parts: object) -> float:
    """A number in [0, 1) derived from `parts`: the same task behaves the same in every process and attempt."""
    return (zlib.crc32(":".join(map(str, parts)).encode()) % 10_000) / 10_000


def append_line(path: str | Path, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, orjson.dumps(record) + b"\n")
    finally:
        os.close(fd)


def read_lines(path: str | Path) -> list[dict[str, Any]]:
    """Every recorded execution, in the order they were written; no file yet means none."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return [orjson.loads(line) for line in data.splitlines() if line]


@handler("t_effect")
async def effect(ctx: TaskContext) -> dict[str, Any]:
    """Sleep, then record this execution; the first attempt of one task in `retry_one_in` asks for a retry."""
    p: dict[str, Any] = ctx.payload or {}
    seconds = float(p.get("sleep", 0.0)) + float(p.get("jitter", 0.0)) * unit(ctx.run_id, ctx.task, "sleep")
    if seconds > 0:
        await asyncio.sleep(seconds)  # wait-ok: a handler's simulated work
    one_in = int(p.get("retry_one_in", 0))
    retry = ctx.attempt == 1 and one_in > 0 and unit(ctx.run_id, ctx.task) * one_in < 1
    dispatch = f"{ctx.run_id}:{ctx.task}:{ctx.attempt}"
    append_line(
        p["log"],
        {
            "run": ctx.run_id,
            "task": ctx.task,
            "attempt": ctx.attempt,
            "dispatch": dispatch,
            "outcome": "retry" if retry else "ok",
            "pid": os.getpid(),
            "ts": time.time(),
        },
    )
    if retry:
        raise Retry("asked for a second attempt", delay=float(p.get("retry_delay", 0.2)))
    return {"dispatch": dispatch}
