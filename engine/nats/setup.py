"""Connecting to NATS and declaring jetdag's streams and buckets (idempotently, never silently changed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from jetdag.engine import subjects as S
from jetdag.engine.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Topology:
    """The settings that shape streams and buckets; they decide durability (see README)."""

    replicas: int = 1
    events_max_age: float = 7 * 86400.0
    """How long run events are kept; must exceed the longest retry delay (timers live there)."""
    dlq_max_age: float = 30 * 86400.0
    duplicate_window: float = 120.0
    lease_ttl: float = 6.0
    worker_ttl: float = 15.0


async def connect(url: str, name: str) -> NATS:
    """A connection that keeps reconnecting; errors after the first connect are logged, not raised."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats (%s): %s", name, exc)

    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        pending_size=64 * 1024 * 1024,
    )


async def close(nc: NATS, timeout: float = 2.0) -> None:
    """Flush what is buffered (within `timeout`), then close: a dead server cannot hang a shutdown.

    Everything that matters was already acknowledged by JetStream; this only sends trailing acks.
    """
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.flush(), timeout)
    with contextlib.suppress(Exception):
        await nc.close()


def _streams(t: Topology) -> list[js_api.StreamConfig]:
    common: dict[str, Any] = {
        "storage": js_api.StorageType.FILE,
        "num_replicas": t.replicas,
        "duplicate_window": t.duplicate_window,
    }
    return [
        js_api.StreamConfig(
            name=S.TASKS, subjects=["jd.task.>"], retention=js_api.RetentionPolicy.WORK_QUEUE, **common
        ),
        js_api.StreamConfig(
            name=S.EVENTS,
            subjects=["jd.evt.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=t.events_max_age,
            **common,
        ),
        js_api.StreamConfig(
            name=S.INBOX,
            subjects=["jd.submit.>", "jd.enqueue.>"],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            **common,
        ),
        js_api.StreamConfig(
            name=S.DLQ, subjects=["jd.dlq.>"], retention=js_api.RetentionPolicy.LIMITS, max_age=t.dlq_max_age, **common
        ),
    ]


_CHECKED = ("subjects", "retention", "num_replicas", "storage")


async def ensure(js: JetStreamContext, topology: Topology | None = None) -> None:
    """Create what is missing; a stream that exists with other settings is reported, not changed."""
    t = topology or Topology()
    for want in _streams(t):
        assert want.name is not None
        try:
            have = (await js.stream_info(want.name)).config
        except NotFoundError:
            await js.add_stream(want)
            continue
        for field in _CHECKED:
            a, b = getattr(have, field), getattr(want, field)
            if field == "subjects":
                a, b = sorted(a or []), sorted(b or [])
            if a != b:
                raise ConfigError(
                    f"stream {want.name} exists with {field}={a!r} but jetdag needs {b!r}: "
                    f"remove it (`nats stream rm {want.name}`) or point jetdag at another server"
                )
    buckets = [
        (S.RUNS_KV, 1, None),
        (S.DEFS_KV, 64, None),
        (S.LEASES_KV, 1, t.lease_ttl),
        (S.WORKERS_KV, 1, t.worker_ttl),
        (S.SCHEDULES_KV, 1, None),
    ]
    for bucket, history, ttl in buckets:
        try:
            await js.key_value(bucket)
        except Exception:  # BucketNotFoundError; nats-py raises a few kinds here
            await js.create_key_value(
                bucket=bucket,
                history=history,
                ttl=ttl,
                replicas=t.replicas,
                storage=js_api.StorageType.FILE,
            )
