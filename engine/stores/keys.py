"""The keys of a KV bucket, read from its stream's subject index (`STREAM.INFO` with a subjects filter).

nats-py's `KeyValue.keys()` opens an ordered consumer per call, which the server keeps for five minutes after
it is dropped, and the server allows a stream 1,000 consumers: a dashboard listing runs on every render used
them up in minutes ("maximum consumers limit reached"). The subject index costs one request per 100,000 keys
and leaves nothing behind. A deleted key may still be listed (its delete marker keeps the subject): readers
skip what they cannot read.
"""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client as NATS


async def keys(nc: NATS, bucket: str, timeout: float = 5.0) -> list[str]:
    """Every key of `bucket` that has a message (values and delete markers), unordered."""
    prefix = f"$KV.{bucket}."
    out: list[str] = []
    while True:
        request = {"subjects_filter": f"{prefix}>", "offset": len(out)}
        reply = await nc.request(f"$JS.API.STREAM.INFO.KV_{bucket}", orjson.dumps(request), timeout=timeout)
        info: dict[str, Any] = orjson.loads(reply.data)
        if "error" in info:
            raise RuntimeError(f"listing the keys of {bucket}: {info['error'].get('description', info['error'])}")
        subjects = info.get("state", {}).get("subjects") or {}
        out.extend(subject[len(prefix) :] for subject in subjects)
        if not subjects or len(out) >= info.get("total", len(out)):
            return out
