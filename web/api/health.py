"""GET /api/v1/health: 200 once NATS answers and every partition has an engine; 503 with details before."""

from __future__ import annotations

import contextlib
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from nats.js.errors import KeyNotFoundError

from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.stores.keys import keys


async def _keys(client: Client, bucket: str) -> list[str]:
    """The keys of `bucket` that hold a value now (a load balancer asks often: no consumer left behind per call)."""
    kv = await client.js.key_value(bucket)
    live = []
    for key in await keys(client.nc, bucket):
        with contextlib.suppress(KeyNotFoundError):
            if (await kv.get(key)).value:
                live.append(key)
    return live


@get("/api/v1/health")
async def health(state: State) -> Response[dict[str, Any]]:
    client: Client = state.client
    partitions: int = state.partitions
    body: dict[str, Any] = {"status": "starting", "nats": client.nc.is_connected}
    try:
        leases = [k for k in await _keys(client, S.LEASES_KV) if k.startswith("partition-")]
        workers = await _keys(client, S.WORKERS_KV)
    except Exception as exc:
        body.update(status="degraded", error=f"{type(exc).__name__}: {exc}")
        return Response(body, status_code=503)
    body["engine"] = {"partitions": partitions, "owned": len(leases)}
    body["workers"] = len(workers)
    ok = client.nc.is_connected and len(leases) >= partitions
    body["status"] = "ok" if ok else "starting"
    return Response(body, status_code=200 if ok else 503)
