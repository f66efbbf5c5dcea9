"""`kill -9` of the auditor mid-batch, three times, while runs keep producing events: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from pathlib import Path

import pytest

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from tests.e2e.up_process import JETDAG, clean_env
from tests.helpers import eventually

CHAIN = WorkflowSpec(
    "t_chaos_chain", tuple(TaskSpec(f"s{i}", "noop", depends_on=(f"s{i - 1}",) if i else ()) for i in range(5))
)


def start_auditor(url: str, db: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [JETDAG, "auditor", "--nats", url, "--db", str(db)],
            env=clean_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.mark.chaos
async def test_auditor_kill_9_mid_batch_loses_and_duplicates_nothing(nats_url: str, tmp_path: Path) -> None:
    db, log = tmp_path / "audit.duckdb", tmp_path / "auditor.log"
    rng = random.Random(7)
    async with System(nats_url, concurrency=64), await Client.connect(nats_url) as client:
        await client.apply(CHAIN)
        auditor = start_auditor(nats_url, db, log)
        run_ids: list[str] = []
        try:
            for _ in range(3):
                run_ids += [await client.submit(CHAIN.name) for _ in range(60)]
                await asyncio.sleep(rng.uniform(0.3, 1.0))  # the fault's moment, not a synchronisation
                auditor.send_signal(signal.SIGKILL)
                auditor.wait(10)
                auditor = start_auditor(nats_url, db, log)
            for run_id in run_ids:
                assert (await client.wait(run_id, timeout=60))["status"] == "succeeded"
            stream = await client.js.stream_info(S.EVENTS)

            async def caught_up() -> bool:
                try:
                    result = await client.sql("SELECT count(*), count(DISTINCT id), max(id) FROM events", timeout=5)
                except Exception:
                    return False  # the restarted auditor is not answering yet
                return result["rows"] == [[stream.state.messages, stream.state.messages, stream.state.last_seq]]

            await eventually(caught_up, timeout=60, interval=0.2)
            runs = await client.sql("SELECT status, count(*) FROM runs GROUP BY ALL")
            assert runs["rows"] == [["succeeded", len(run_ids)]]
            steps = await client.sql("SELECT count(*) FROM tasks WHERE status = 'succeeded'")
            assert steps["rows"] == [[5 * len(run_ids)]]
        finally:
            auditor.send_signal(signal.SIGTERM)
            assert auditor.wait(20) == 0, log.read_text()
