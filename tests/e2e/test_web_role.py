"""`jetdag web`: the dashboard and API alone, for another machine than the engine's; stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from pathlib import Path

import httpx

from jetdag.engine.nats.setup import close, connect, ensure
from tests.e2e.up_process import JETDAG, clean_env
from tests.helpers import eventually_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _streams(url: str) -> None:
    nc = await connect(url, "test")
    await ensure(nc.jetstream())
    await close(nc)


def test_jetdag_web_serves_the_api_and_the_dashboard_and_stops_on_sigterm(nats_url: str, tmp_path: Path) -> None:
    asyncio.run(_streams(nats_url))  # what an engine elsewhere would have created
    # No engine: health answers 503 naming the unowned partitions, which is an answer.
    base = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [JETDAG, "web", "--nats", nats_url, "--http", base.removeprefix("http://")],
        cwd=tmp_path, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return httpx.get(f"{base}/api/v1/health", timeout=2).status_code in (200, 503)
            except httpx.TransportError:
                return False

        eventually_sync(healthy, timeout=20, interval=0.05)
        page = httpx.get(f"{base}/runs", timeout=5)
        assert page.status_code == 200 and "<title>" in page.text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


def test_jetdag_web_refuses_a_public_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [JETDAG, "web", "--nats", "nats://127.0.0.1:1", "--http", "0.0.0.0:8080"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "binds only to loopback" in done.stderr


def test_jetdag_web_against_a_nats_without_jetdag_says_so(nats_url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [JETDAG, "web", "--nats", nats_url, "--http", f"127.0.0.1:{free_port()}"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "holds no jetdag buckets" in done.stderr and "Traceback" not in done.stderr
