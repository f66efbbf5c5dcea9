"""GET /api/v1/workers in-process: the worker of the `system` fixture, as its heartbeat shows it."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from jetdag.actors.system import System
from jetdag.web.app import create_app
from tests.helpers import eventually


async def test_the_workers_endpoint_lists_the_live_worker(nats_url: str, system: System) -> None:
    assert system.worker is not None
    async with AsyncTestClient(app=create_app(nats_url)) as http:

        async def listed() -> list[dict[str, Any]]:
            response = await http.get("/api/v1/workers")
            assert response.status_code == 200, response.text
            return [w for w in response.json() if w["id"] == system.worker.id]  # type: ignore[union-attr]

        (worker,) = await eventually(listed)
    assert (worker["queues"], worker["state"], worker["alive"], worker["running"]) == (["default"], "alive", True, 0)
    assert worker["interval"] == 5.0 and worker["concurrency"] == 16 and "noop" in worker["handlers"]
