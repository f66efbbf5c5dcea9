"""Worker heartbeats in KV `jd_workers`, when a worker is presumed dead, and which redeliveries are stale.

A worker puts one msgpack map under its id every `interval` seconds (and soon after it starts a
task, so a task that has just begun is already known if the worker dies before its next beat):

    {"v": 1, "id", "host", "pid", "queues", "handlers", "handlers_version", "concurrency", "interval", "started",
     "beat", "done", "running": [{"run", "task", "attempt", "reply", "started"}, …]}

`beat`, `started` are epoch seconds. A worker that misses DEAD_AFTER_BEATS beats in a row is
presumed dead: the engines' reaper fails each attempt it was running (a retryable failure, so the
run's retry policy decides what happens next) and deletes its entry. Pure functions only: the
worker, the reaper, the client and the web API share them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

HEARTBEAT: Final = 5.0
"""Seconds between a worker's heartbeats (`jetdag worker --heartbeat`)."""
DEAD_AFTER_BEATS: Final = 3
"""A worker whose last beat is older than this many of its own intervals is presumed dead."""
MIN_INTERVAL: Final = 0.05
"""An advertised interval is never taken to be shorter than this (a broken heartbeat cannot make reaping eager)."""

_REPLY = re.compile(r"^jd\.evt\.[0-9]+\.([A-Za-z0-9_-]+)$")


@dataclass(frozen=True, slots=True)
class RunningTask:
    """One attempt a worker said it was running at its last beat."""

    run: str
    task: str
    attempt: int
    reply: str
    started: float

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "task": self.task, "attempt": self.attempt, "reply": self.reply,
                "started": self.started}  # fmt: skip


def interval_of(info: dict[str, Any]) -> float:
    """The heartbeat interval a worker advertises (the default for workers that do not say)."""
    value = info.get("interval")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return max(float(value), MIN_INTERVAL)
    return HEARTBEAT


def dead_after(info: dict[str, Any]) -> float:
    """Seconds without a beat after which this worker is presumed dead."""
    return DEAD_AFTER_BEATS * interval_of(info)


def running_tasks(info: dict[str, Any]) -> list[RunningTask]:
    """The well-formed entries of `running`; one whose reply is not its run's `jd.evt.<p>.<run>` is left out."""
    out: list[RunningTask] = []
    running = info.get("running")
    for item in running if isinstance(running, list) else []:
        if not isinstance(item, dict):
            continue
        run, task, attempt, reply = item.get("run"), item.get("task"), item.get("attempt"), item.get("reply")
        if not (isinstance(run, str) and isinstance(task, str) and isinstance(reply, str)):
            continue
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            continue
        match = _REPLY.match(reply)
        if match is None or match.group(1) != run:
            continue
        started = item.get("started")
        out.append(RunningTask(run, task, attempt, reply, float(started) if isinstance(started, int | float) else 0.0))
    return out


def worker_view(info: dict[str, Any], now: float) -> dict[str, Any]:
    """What `jetdag workers --json` and `GET /api/v1/workers` show for one heartbeat, judged at `now`."""
    beat = info.get("beat")
    beat = float(beat) if isinstance(beat, int | float) else 0.0
    age = max(0.0, now - beat)
    tasks = [t.to_dict() for t in running_tasks(info)]
    alive = age <= dead_after(info)
    return {
        "id": info.get("id"),
        "host": info.get("host"),
        "pid": info.get("pid"),
        "queues": info.get("queues") or [],
        "handlers": info.get("handlers") or [],
        "handlers_version": info.get("handlers_version"),
        "labels": info.get("labels") or {},
        "concurrency": info.get("concurrency"),
        "running": len(tasks),
        "tasks": tasks,
        "done": info.get("done", 0),
        "started": info.get("started"),
        "last_beat": beat,
        "age": round(age, 3),
        "interval": interval_of(info),
        "alive": alive,
        "state": "alive" if alive else "presumed dead",
    }


def superseded(snapshot: dict[str, Any], task: str, attempt: int) -> str | None:
    """Why a redelivered message for `attempt` of `task` must not run, from the run's snapshot; None: run it.

    It is stale when the run is over, when a newer attempt was dispatched (its worker was presumed
    dead and the attempt failed), or when this attempt already has its result.
    """
    status = snapshot.get("status")
    if status in ("succeeded", "failed", "cancelled"):
        return f"the run is already {status}"
    state = (snapshot.get("tasks") or {}).get(task)
    if not isinstance(state, dict):
        return None
    current, task_status = state.get("attempt", 0), state.get("status")
    if isinstance(current, int) and current > attempt:
        return f"attempt {current} is the current one"
    if current == attempt and task_status not in ("queued", "running"):
        return f"attempt {attempt} is already {task_status}"
    return None


UNSERVED_AFTER: Final = 10.0
"""Seconds a task may wait queued before `status`, the run page and /metrics say that no live worker can run it:
a worker that was just started, or restarted, is given time to beat."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What one live worker can take: its queues, handlers and labels."""

    queues: frozenset[str]
    handlers: frozenset[str]
    labels: Mapping[str, str]


def served(workers: list[dict[str, Any]]) -> list[Offer]:
    """What each live worker can take, from `worker_view`s."""
    return [
        Offer(frozenset(map(str, w.get("queues") or ())), frozenset(map(str, w.get("handlers") or ())),
              {str(k): str(v) for k, v in (w.get("labels") or {}).items()})
        for w in workers if w.get("alive")
    ]  # fmt: skip


def unserved_reason(queue: str, handler: str, requires: Mapping[str, str] | None, offers: list[Offer]) -> str | None:
    """What to tell a user whose task waits for a worker no one runs; None while a live worker can take it."""
    wanted = dict(requires or {})
    for offer in offers:
        if queue in offer.queues and handler in offer.handlers and wanted.items() <= offer.labels.items():
            return None
    with_labels = f" with {', '.join(f'{k}={v}' for k, v in sorted(wanted.items()))}" if wanted else ""
    return f"no live worker{with_labels} has handler {handler!r} for queue {queue!r}"
