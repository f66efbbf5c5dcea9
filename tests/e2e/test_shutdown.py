"""Each role stops promptly on SIGTERM even when its NATS is gone: nothing waits out a request timeout."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jetdag.engine import subjects as S
from jetdag.engine.nats.server import NatsServer
from jetdag.engine.nats.setup import close, connect
from tests.e2e.up_process import JETDAG, clean_env
from tests.helpers import eventually

STOP_WITHIN = 8.0  # the goodbyes get 2 s, a draining worker's fetch 1 s; far below a 5 s timeout per request


@pytest.mark.parametrize("role", [["engine"], ["worker"]])
async def test_a_role_stops_promptly_on_sigterm_after_nats_died(
    nats_server: NatsServer, tmp_path: Path, role: list[str]
) -> None:
    log = (tmp_path / "role.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        JETDAG, *role, "--nats", nats_server.url, stdout=log, stderr=subprocess.STDOUT, env=clean_env()
    )
    try:
        nc = await connect(nats_server.url, "t")
        bucket = S.LEASES_KV if role == ["engine"] else S.WORKERS_KV

        async def serving() -> bool:  # leases held, or the worker's heartbeat written
            try:
                return len(await (await nc.jetstream().key_value(bucket)).keys()) > 0
            except Exception:
                return False

        await eventually(serving, timeout=20)
        await close(nc)
        nats_server.stop()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        took = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    assert code == 0, (tmp_path / "role.log").read_text()
    assert took < STOP_WITHIN, f"{role[0]} took {took:.1f}s to stop:\n{(tmp_path / 'role.log').read_text()[-2000:]}"
