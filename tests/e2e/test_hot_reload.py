"""`jetdag worker --import MOD --reload`: new attempts run the new code, running ones finish on the old, a
dropped handler is no longer advertised; SIGHUP reloads too."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from tests.e2e.up_process import JETDAG, clean_env
from tests.helpers import eventually

QUEUE = "t_hot_q"
MODULE = """
import asyncio
from pathlib import Path

from jetdag.engine.handlers import handler


@handler("t_hot")
async def hot(ctx):
    release = Path(ctx.payload["dir"]) / "release"
    while ctx.payload["hold"] and not release.exists():
        await asyncio.sleep(0.02)
    return "v1"


@handler("t_hot_gone")
def gone(ctx):
    return "gone"
"""
NEW = MODULE.replace('return "v1"', 'return "v2"').split('@handler("t_hot_gone")')[0]


def spec(tmp: Path, hold: bool) -> WorkflowSpec:
    payload = {"dir": str(tmp), "hold": hold}
    name = "t_hot_hold" if hold else "t_hot_quick"
    return WorkflowSpec(
        name, (TaskSpec("t", "t_hot", queue=QUEUE, payload=payload),), retry=RetryPolicy(max_attempts=1)
    )


@pytest.fixture
async def client(nats_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    async with System(nats_url, queues=[]), await Client.connect(nats_url) as c:
        await c.apply(spec(tmp_path, hold=True))
        await c.apply(spec(tmp_path, hold=False))
        yield c


async def the_worker(client: Client, pid: int) -> dict[str, Any] | None:
    return next((w for w in await client.workers() if w["pid"] == pid), None)


async def result(client: Client, run_id: str) -> Any:
    view = await client.wait(run_id, timeout=20)
    assert view["status"] == "succeeded", view
    return view["tasks"]["t"]["result"]


async def test_a_reload_changes_new_attempts_only_and_drops_a_removed_handler(
    client: Client, nats_url: str, tmp_path: Path
) -> None:
    (tmp_path / "t_hot_mod.py").write_text(MODULE)
    log = tmp_path / "worker.log"
    proc = start_worker(nats_url, tmp_path, log)
    try:
        first = await eventually(lambda: the_worker(client, proc.pid), timeout=20)
        assert {"t_hot", "t_hot_gone"} <= set(first["handlers"])
        held = await client.submit("t_hot_hold")

        async def running() -> bool:
            w = await the_worker(client, proc.pid)
            return w is not None and any(t["run"] == held for t in w["tasks"])

        await eventually(running, timeout=20)
        (tmp_path / "t_hot_mod.py").write_text(NEW)

        async def reloaded() -> dict[str, Any] | None:
            w = await the_worker(client, proc.pid)
            return w if w is not None and "t_hot_gone" not in w["handlers"] else None

        now = await eventually(reloaded, timeout=20)
        assert "t_hot" in now["handlers"] and now["handlers_version"] != first["handlers_version"]
        assert await result(client, await client.submit("t_hot_quick")) == "v2"  # a new attempt: the new code
        (tmp_path / "release").touch()
        assert await result(client, held) == "v1"  # the attempt that was running: the code it started with

        proc.send_signal(signal.SIGHUP)
        await eventually(lambda: _said(log, "reload: t_hot_mod: reloaded, nothing changed"), timeout=20)
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()
    assert "reload: t_hot_mod: reloaded (changed t_hot; removed t_hot_gone)" in log.read_text()


def start_worker(nats_url: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    args = ["worker", "--nats", nats_url, "--queue", QUEUE, "--import", "t_hot_mod", "--reload", "--heartbeat", "0.5"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [JETDAG, *args], cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


async def _said(log: Path, line: str) -> bool:
    return line in await asyncio.to_thread(log.read_text)
