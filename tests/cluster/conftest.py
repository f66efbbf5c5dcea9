"""A real 3-node JetStream cluster on loopback: nodes can be killed (SIGKILL) and started again on their data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from jetdag.engine.nats.server import binary

CLUSTER_NAME = "jetdag-test"


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free a moment ago (all held open together, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    name: str
    client: int
    route: int
    monitor: int
    root: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.monitor}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """Nodes 0, 1, 2 (server names node-1 … node-3); each a nats-server in its own process group."""

    def __init__(self, root: Path, size: int = 3) -> None:
        ports = free_ports(3 * size)
        self.nodes = [
            Node(f"node-{i + 1}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], root / f"node-{i + 1}")
            for i in range(size)
        ]
        for node in self.nodes:
            node.root.mkdir(parents=True)
            routes = "\n".join(f"    nats-route://127.0.0.1:{n.route}" for n in self.nodes if n is not node)
            (node.root / "nats.conf").write_text(
                f"server_name: {node.name}\n"
                f'listen: "127.0.0.1:{node.client}"\n'
                f'http: "127.0.0.1:{node.monitor}"\n'
                "max_payload: 8MB\n"
                f'jetstream {{\n  store_dir: "{node.root / "js"}"\n  max_mem: 256M\n  max_file: 2G\n'
                "  sync_interval: always\n}\n"  # as deploy/nats/ and the chaos tests on one server
                f'cluster {{\n  name: {CLUSTER_NAME}\n  listen: "127.0.0.1:{node.route}"\n'
                f"  routes [\n{routes}\n  ]\n}}\n"
            )

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (what --nats takes)."""
        return ",".join(n.url for n in self.nodes)

    def node_url(self, i: int) -> str:
        return self.nodes[i].url

    def index(self, name_or_url: str) -> int:
        """The node named `node-2`, or listening at a client URL like `nats://127.0.0.1:PORT`."""
        for i, n in enumerate(self.nodes):
            if name_or_url == n.name or name_or_url.rstrip("/").endswith(f":{n.client}"):
                return i
        raise KeyError(name_or_url)

    def start_all(self, timeout: float = 30.0) -> None:
        for i in range(len(self.nodes)):
            self._spawn(i)
        deadline = time.monotonic() + timeout
        for i in range(len(self.nodes)):
            self._wait_healthy(i, deadline)
        self._until(deadline, lambda: self.meta_leader() is not None, "no JetStream meta leader")
        # A leader seen once may still be replaced while the last peer joins: ready when every node
        # answers a JetStream API request (which goes through the meta leader).
        for i in range(len(self.nodes)):
            self._until(deadline, lambda i=i: self._js_answers_sync(i), f"{self.nodes[i].name}: no JetStream")

    def start(self, i: int, timeout: float = 30.0) -> None:
        """Start node `i` again, on the same ports and store dir; returns once its JetStream answers."""
        assert not self.nodes[i].alive, f"{self.nodes[i].name} is running"
        self._spawn(i)
        self._wait_healthy(i, time.monotonic() + timeout)

    def kill(self, i: int) -> None:
        """SIGKILL node `i` (a crash: nothing is flushed)."""
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node's process group, then SIGKILL what is still there after `timeout`."""
        running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for node in running:
            assert node.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in running:
            assert node.proc is not None
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()

    def monitor(self, i: int, path: str, **params: Any) -> Any:
        """GET a monitoring endpoint of node `i` (`jsz`, `healthz`, …) as JSON."""
        response = httpx.get(f"{self.nodes[i].http}/{path}", params=params, timeout=2)
        response.raise_for_status()
        return response.json()

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name, as the first node that answers sees it."""
        for i, node in enumerate(self.nodes):
            if node.alive:
                with contextlib.suppress(httpx.HTTPError):
                    leader = (self.monitor(i, "jsz").get("meta_cluster") or {}).get("leader")
                    if leader:
                        return str(leader)
        return None

    def stream_state(self, i: int, stream: str) -> dict[str, Any] | None:
        """Node `i`'s own copy of `stream` (its local state, not the leader's), or None if it holds none."""
        jsz = self.monitor(i, "jsz", accounts="true", streams="true")
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    state: dict[str, Any] = detail["state"]
                    return state
        return None

    def log(self, i: int) -> str:
        return (self.nodes[i].root / "nats.log").read_text(errors="replace")

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        with (node.root / "nats.log").open("ab") as log:
            node.proc = subprocess.Popen(
                [binary(), "-c", str(node.root / "nats.conf")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches it and nothing else
            )

    def _healthy(self, i: int) -> bool:
        if not self.nodes[i].alive:
            raise AssertionError(f"{self.nodes[i].name} exited:\n{self.log(i)[-3000:]}")
        try:
            r = httpx.get(f"{self.nodes[i].http}/healthz", params={"js-enabled-only": "true"}, timeout=1)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def _js_answers_sync(self, i: int) -> bool:
        # On a thread of its own: callable from inside a running event loop too (after asyncio.to_thread or not).
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self._js_answers(i)).result()

    async def _js_answers(self, i: int) -> bool:
        try:
            nc = await asyncio.wait_for(nats.connect(self.node_url(i), max_reconnect_attempts=0), 2)
        except Exception:
            return False
        try:
            await nc.jetstream(timeout=2).account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    def _wait_healthy(self, i: int, deadline: float) -> None:
        self._until(deadline, lambda: self._healthy(i), f"{self.nodes[i].name} not healthy")

    def _until(self, deadline: float, ok: Any, what: str) -> None:
        while not ok():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{self.log(j)[-2000:]}" for j, n in enumerate(self.nodes))
                raise AssertionError(f"{what}\n{logs}")
            time.sleep(0.05)  # polling interval, bounded by the deadline


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-servers clustered on loopback, JetStream ready (healthy nodes and a meta leader)."""
    # On tmpfs when there is one: the nodes fsync every write (as deploy/nats/ does), and on a disk that
    # other tests just filled with dirty pages one fsync could stall for seconds. A node killed with -9
    # keeps its tmpfs files, so what the tests check (no acknowledged write lost) is unchanged.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path, prefix="jetdag-cluster-") as root:
        cluster = NatsCluster(Path(root) / "cluster")
        try:
            cluster.start_all()
            yield cluster
        finally:
            cluster.stop()
