"""Connecting to NATS and declaring jetdag's streams and buckets (idempotently, never silently changed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from jetdag.engine import subjects as S
from jetdag.engine.blobs import BLOB_TTL
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


def server_list(url: str) -> list[str]:
    """`nats://h1:4222,nats://h2:4222` (a cluster, as --nats takes it) as the list nats-py wants."""
    return [u.strip() for u in url.split(",") if u.strip()]


async def connect(url: str, name: str) -> NATS:
    """A connection that keeps reconnecting; errors after the first connect are logged, not raised.

    `url` may name several servers of one cluster, comma-separated; the client moves between them.
    """

    last: dict[str, float] = {}

    async def on_error(exc: Exception) -> None:
        # A server that is down fails every reconnect (twice a second): say so once a minute.
        text = str(exc)
        if time.monotonic() - last.get(text, -60.0) >= 60.0:
            last[text] = time.monotonic()
            log.warning("nats (%s): %s", name, text)

    return await nats.connect(
        server_list(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        pending_size=64 * 1024 * 1024,
    )


async def farewell(*goodbyes: Awaitable[Any], timeout: float = 2.0) -> None:
    """Best-effort goodbyes of a stopping process (leases handed back, a roster or heartbeat key removed),
    all at once and within `timeout`: with NATS gone each would wait out its request timeout and hold up
    the shutdown. Whatever is not said lapses with its key's TTL."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*goodbyes, return_exceptions=True)


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


async def ensure(js: JetStreamContext, topology: Topology | None = None, leader_timeout: float = 15.0) -> None:
    """Create what is missing; a stream that exists with other settings is reported, not changed.

    Returns once every stream and bucket can take writes: in a cluster, a stream just created (or
    one whose nodes just restarted) has no leader for a moment, and a publish to it finds no responder.
    """
    t = topology or Topology()
    names: list[str] = []
    for want in _streams(t):
        assert want.name is not None
        names.append(want.name)
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
        (S.FILES_KV, 1, None),
    ]
    for bucket, history, ttl in buckets:
        names.append(f"KV_{bucket}")
        try:
            kv = await js.key_value(bucket)
        except Exception:  # BucketNotFoundError; nats-py raises a few kinds here
            await js.create_key_value(
                bucket=bucket,
                history=history,
                ttl=ttl,
                replicas=t.replicas,
                storage=js_api.StorageType.FILE,
            )
            continue
        replicas = (await kv.status()).stream_info.config.num_replicas
        if replicas != t.replicas:
            raise ConfigError(
                f"KV bucket {bucket} exists with num_replicas={replicas!r} but jetdag needs {t.replicas!r}: "
                f"remove it (`nats kv rm {bucket}`) or point jetdag at another server"
            )
    names.append(f"OBJ_{S.BLOBS}")
    try:
        await js.object_store(S.BLOBS)
    except Exception:  # BucketNotFoundError, as for the KV buckets
        await js.create_object_store(
            S.BLOBS,
            js_api.ObjectStoreConfig(
                description="jetdag: large results and payloads, by reference",
                ttl=BLOB_TTL, replicas=t.replicas, storage=js_api.StorageType.FILE,
            ),
        )  # fmt: skip
    await _leaders(js, names, leader_timeout)


async def _leaders(js: JetStreamContext, streams: list[str], timeout: float) -> None:
    """Until each stream has a leader (at once on a single server); a warning after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    waiting = list(streams)
    while waiting:
        info = await js.stream_info(waiting[0])
        if info.cluster is None or info.cluster.leader:
            waiting.pop(0)
            continue
        if time.monotonic() > deadline:
            log.warning("streams without a leader after %gs: %s (is a quorum of nodes up?)", timeout, waiting)
            return
        await asyncio.sleep(0.05)
