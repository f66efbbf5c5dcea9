"""jetdag on a 3-node JetStream cluster: three replicas of everything, and no acknowledged run lost to a node crash."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from nats.errors import Error as NatsError

from jetdag.actors.system import System
from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.errors import ConfigError
from jetdag.engine.ids import new_run_id
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.nats.server import binary
from jetdag.engine.nats.setup import Topology, close, connect, ensure
from tests.cluster.conftest import NatsCluster
from tests.e2e.up_process import jetdag
from tests.helpers import eventually

log = logging.getLogger(__name__)

R3 = Topology(replicas=3)
STREAMS = [S.TASKS, S.EVENTS, S.INBOX, S.DLQ]
BUCKETS = [S.RUNS_KV, S.DEFS_KV, S.LEASES_KV, S.WORKERS_KV, S.SCHEDULES_KV]

DIAMOND = WorkflowSpec(
    "t_cluster_diamond",
    (
        TaskSpec("a", "noop"),
        TaskSpec("b", "noop", depends_on=("a",)),
        TaskSpec("c", "noop", depends_on=("a",)),
        TaskSpec("d", "noop", depends_on=("b", "c")),
    ),
)
CHAIN = WorkflowSpec(
    "t_cluster_chain",
    (
        TaskSpec("one", "noop"),
        TaskSpec("two", "noop", depends_on=("one",)),
        TaskSpec("three", "noop", depends_on=("two",)),
    ),
)


async def test_replicas_3_everywhere_and_a_diamond_runs(nats_cluster: NatsCluster) -> None:
    system = System(nats_cluster.url, topology=R3, idle_timeout=5.0, drain_timeout=5.0)
    async with system, await Client.connect(nats_cluster.url) as client:
        for stream in [*STREAMS, *(f"KV_{b}" for b in BUCKETS)]:
            info = await client.js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, stream
        await client.apply(DIAMOND)
        view = await client.wait(await client.submit(DIAMOND.name), timeout=20)
    assert view["status"] == "succeeded"
    assert all(view["tasks"][name]["status"] == "succeeded" for name in "abcd")

    nc = await connect(nats_cluster.url, "t")
    try:  # a process asking for another number of replicas is stopped, and nothing is changed
        with pytest.raises(ConfigError, match=r"stream JD_TASKS exists with num_replicas=3 but jetdag needs 1"):
            await ensure(nc.jetstream(), Topology(replicas=1))
        assert (await nc.jetstream().stream_info(S.TASKS)).config.num_replicas == 3
    finally:
        await close(nc)


async def test_a_bucket_with_other_replicas_is_reported(nats_cluster: NatsCluster) -> None:
    nc = await connect(nats_cluster.url, "t")
    try:
        js = nc.jetstream()
        await js.create_key_value(bucket=S.RUNS_KV, replicas=1)
        with pytest.raises(ConfigError, match=rf"KV bucket {S.RUNS_KV} exists with num_replicas=1 but jetdag needs 3"):
            await ensure(js, R3)
    finally:
        await close(nc)


async def _submit(client: Client, workflow: str, deadline: float) -> str:
    """Submit until JetStream acknowledges it; the same run id each time, so a retry is deduplicated."""
    run_id = new_run_id()
    while True:
        try:
            return await client.submit(workflow, run_id=run_id)
        except NatsError as exc:  # the node we talk to died, or a stream is electing its leader
            if time.monotonic() > deadline:
                raise
            log.info("submit %s: %r, again", run_id, exc)
            await asyncio.sleep(0.1)  # back off before retrying (not a synchronisation)


async def _wait(client: Client, run_id: str, deadline: float) -> dict[str, Any]:
    """The run's final view; a watch that fails on NATS trouble is started again, until `deadline`."""
    while True:
        try:
            return await client.wait(run_id, timeout=max(0.1, deadline - time.monotonic()))
        except NatsError as exc:
            if time.monotonic() > deadline:
                raise
            log.info("wait %s: %r, again", run_id, exc)


JETDAG_STREAMS = [*STREAMS, f"KV_{S.RUNS_KV}"]


@pytest.mark.chaos
async def test_a_node_crash_loses_no_acknowledged_run_and_the_node_catches_up(nats_cluster: NatsCluster) -> None:
    async with System(nats_cluster.url, topology=R3, concurrency=32, idle_timeout=5.0, drain_timeout=5.0) as system:
        assert system.nc is not None and system.nc.connected_url is not None
        async with await Client.connect(nats_cluster.url) as client:
            await client.apply(CHAIN)
            # One run first: the worker has created its consumers (a role that cannot start stops the system).
            assert (await client.wait(await client.submit(CHAIN.name), timeout=20))["status"] == "succeeded"
            # Crash the node the engine and worker are connected to: they have to move to another node,
            # and whatever it was sending them, or they it, is lost on the way.
            victim = nats_cluster.index(system.nc.connected_url.geturl())
            deadline = time.monotonic() + 30
            runs: list[str] = []
            for n in range(100):
                if n == 40:
                    nats_cluster.kill(victim)
                runs.append(await _submit(client, CHAIN.name, deadline))
            # A message lost in flight comes back after its consumer's AckWait (30 s for tasks and submissions).
            deadline = time.monotonic() + 60
            views = [await _wait(client, run_id, deadline) for run_id in runs]
            assert [v["status"] for v in views] == ["succeeded"] * len(runs)

            await asyncio.to_thread(nats_cluster.start, victim)

            async def caught_up() -> bool:
                for stream in JETDAG_STREAMS:
                    leader = (await client.js.stream_info(stream)).state  # what the stream's leader holds
                    mine = await asyncio.to_thread(nats_cluster.stream_state, victim, stream)
                    assert mine is not None, f"{stream}: no copy on the restarted node"
                    assert (mine["last_seq"], mine["messages"]) == (leader.last_seq, leader.messages), stream
                return True

            await eventually(caught_up, timeout=20, interval=0.1)
            assert (nats_cluster.stream_state(victim, S.EVENTS) or {})["last_seq"] > 100


def test_up_with_replicas_needs_a_cluster(tmp_path: Path) -> None:
    done = jetdag("up", "--replicas", "3", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--replicas 3 needs a NATS cluster: pass --nats URL of one (see deploy/nats/)" in done.stderr
    assert not (tmp_path / "data" / "nats").exists()  # no embedded server was started


@pytest.mark.parametrize("node", [1, 2, 3])
def test_the_deploy_configs_are_valid_and_fsync_every_write(node: int) -> None:
    conf = Path(__file__).resolve().parents[2] / "deploy" / "nats" / f"node-{node}.conf"
    checked = subprocess.run([binary(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert re.search(r"^\s*sync_interval:\s*always", conf.read_text(), re.MULTILINE)
