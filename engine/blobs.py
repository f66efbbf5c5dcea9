"""Large results and payloads by reference: stored in the `jd_blobs` object store, carried as `{"$blob", "size"}`.

A result over BLOB_ABOVE bytes (msgpack) is put into the store by the worker that produced it, and its event,
the run's snapshot and `status` carry the reference instead: a run of ten 5 MiB results keeps a snapshot of a
few hundred bytes. A rendered payload over BLOB_ABOVE is put there by the engine. A worker resolves every
reference in a payload before the handler sees it, so `{result:task}` of a large result hands the child the
value itself; `{result:task.key}` into one, or one inside a longer string, is an error that says so (the
engine would have to fetch the value to render it). Blobs expire with BLOB_TTL.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from jetdag.engine import subjects as S
from jetdag.engine.messages import pack

BLOB_ABOVE = int(os.environ.get("JETDAG_BLOB_ABOVE", 64 * 1024))
"""Bytes of msgpack above which a result or payload travels by reference (env JETDAG_BLOB_ABOVE)."""
BLOB_TTL = 7 * 24 * 3600.0
"""Seconds a blob is kept, as long as JD_EVENTS keeps a run's events."""
REF = "$blob"


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 2 and REF in value and "size" in value


def has_refs(value: Any) -> bool:
    if isinstance(value, dict):
        return is_ref(value) or any(has_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(has_refs(v) for v in value)
    return False


def blob_name(run: str, task: str, attempt: int, what: str) -> str:
    """`what` is `result` or `payload`: one name per attempt, so a retried put replaces the same blob."""
    return f"{run}.{task}.{attempt}.{what}"


class Blobs:
    """The `jd_blobs` object store of one connection."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._store: ObjectStore | None = None

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            self._store = await self.js.object_store(S.BLOBS)
        return self._store

    async def put(self, name: str, value: Any, data: bytes | None = None) -> dict[str, Any]:
        """Store `value` (or its msgpack `data`, when already encoded); the reference that stands for it."""
        data = pack(value) if data is None else data
        await (await self._bucket()).put(name, data)
        return {REF: name, "size": len(data)}

    async def get(self, ref: dict[str, Any]) -> Any:
        result = await (await self._bucket()).get(str(ref[REF]))
        return msgpack.unpackb(result.data or b"", raw=False)

    async def resolve(self, value: Any) -> Any:
        """`value` with every reference in it replaced by what it stands for."""
        if is_ref(value):
            return await self.get(value)
        if isinstance(value, dict):
            return {k: await self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [await self.resolve(v) for v in value]
        return value
