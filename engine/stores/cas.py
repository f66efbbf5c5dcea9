"""A KV write that expects the key's revision, as a publish: pipelined where `kv.update` waits for each reply.

Run snapshots (every step), schedule states (a fire each) and file records (a file each) are written so.
"""

from __future__ import annotations

import asyncio

from jetdag.engine.errors import StaleOwner
from jetdag.engine.nats.publisher import WRONG_LAST_SEQUENCE, Publisher, PublishRefused

EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


async def send(publisher: Publisher, bucket: str, key: str, data: bytes, revision: int) -> asyncio.Future[int]:
    """Send the write of `key` expecting `revision` (0: the key must not exist); await `written` of it."""
    return await publisher.publish(f"$KV.{bucket}.{key}", data, {EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)})


async def written(future: asyncio.Future[int], bucket: str, key: str, revision: int) -> int:
    """The key's new revision; StaleOwner when it was no longer at `revision` (another writer came first)."""
    try:
        return await future
    except PublishRefused as exc:
        if exc.code == WRONG_LAST_SEQUENCE:
            raise StaleOwner(f"{bucket}/{key}", revision) from exc
        raise
    finally:
        future.cancel()  # a no-op when done; else (cancelled while waiting) stops waiting for the ack


async def put(publisher: Publisher, bucket: str, key: str, data: bytes, revision: int) -> int:
    """Write `key` if it is still at `revision`; its new revision, StaleOwner otherwise."""
    return await written(await send(publisher, bucket, key, data, revision), bucket, key, revision)
