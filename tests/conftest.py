"""Fixtures with real parts: a fresh nats-server per test (JetStream in a temp dir), the engine and worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.nats.server import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of our own (ready in ~50 ms), so tests never share streams or state."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def system(nats_url: str) -> AsyncIterator[System]:
    """Engine and a worker for queue `default`, in this process; ready when every partition is owned."""
    async with System(nats_url, concurrency=16, idle_timeout=5.0, drain_timeout=5.0) as running:
        yield running


@pytest.fixture
async def client(nats_url: str, system: System) -> AsyncIterator[Client]:
    async with await Client.connect(nats_url) as c:
        yield c
