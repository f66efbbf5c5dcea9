"""Fixtures with real parts: a fresh nats-server per test (JetStream in a temp dir), the engine and worker."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nats
import pytest

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.nats.server import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NatsServer]:
    """A nats-server of our own (ready in ~50 ms), so tests never share streams or state.

    Chaos tests get `--durability strict` (sync_interval: always), the setting they vouch for, on
    tmpfs when there is one: an fsync on a disk full of other tests' dirty pages can stall for
    seconds, and the processes they kill leave tmpfs files as they leave disk files.
    """
    strict = request.node.get_closest_marker("chaos") is not None
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if strict and shm.is_dir() else tmp_path, prefix="jetdag-") as root:
        server = NatsServer(Path(root) / "nats", sync_always=strict)
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """A failed test that had a NATS server gets the state of every stream and consumer in its report:
    a run that stalled shows where (messages not delivered, delivered and not acked, no pull waiting)."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    server = funcargs.get("nats_cluster") or funcargs.get("nats_server")
    if report.failed and call.when == "call" and server is not None:
        urls = server.url.split(",")
        with ThreadPoolExecutor(1) as pool:  # a loop of its own: the test's may still be running
            report.sections.append(("JetStream at failure", pool.submit(asyncio.run, _jetstream_state(urls)).result()))
    return report


async def _jetstream_state(urls: list[str]) -> str:
    lines: list[str] = []
    try:
        nc = await asyncio.wait_for(nats.connect(urls, max_reconnect_attempts=0), 3)
    except Exception as exc:
        return f"cannot connect to {urls}: {exc!r}"
    try:
        js = nc.jetstream(timeout=3)
        for stream in await js.streams_info():
            st, leader = stream.state, stream.cluster.leader if stream.cluster else None
            name = stream.config.name
            lines.append(f"{name}: {st.messages} msgs, seq {st.first_seq}..{st.last_seq}, leader {leader}")
            with contextlib.suppress(Exception):
                for c in await js.consumers_info(stream.config.name):
                    lines.append(
                        f"  {c.name}: pending {c.num_pending}, ack pending {c.num_ack_pending}, "
                        f"redelivered {c.num_redelivered}, waiting pulls {c.num_waiting}, "
                        f"delivered {c.delivered.stream_seq if c.delivered else None}, "
                        f"ack floor {c.ack_floor.stream_seq if c.ack_floor else None}, "
                        f"leader {c.cluster.leader if c.cluster else None}"
                    )
    except Exception as exc:
        lines.append(f"(stopped: {exc!r})")
    finally:
        await nc.close()
    return "\n".join(lines)
