"""Fixtures of the HTTP tests that need the audit log."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetdag.actors.system import System


@pytest.fixture
def audited_system(nats_url: str, tmp_path: Path) -> Iterator[None]:
    """Engine, worker and auditor on a loop of their own: Litestar's test client blocks the test's loop
    while a request runs, and the auditor must answer meanwhile, as it would from another process."""
    started, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        async with System(nats_url, audit=tmp_path / "audit.duckdb", drain_timeout=1.0):
            started.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="audited system")
    thread.start()
    assert started.wait(20), "the system did not start"
    yield
    stop.set()
    thread.join(20)
