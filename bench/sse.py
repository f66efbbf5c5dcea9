"""SSE fan-out: how fast one web process delivers a run's update to N connected dashboards.

nats-server and one web process (`jetdag web`: Litestar on uvicorn with uvloop/httptools) as separate
processes. N clients (raw asyncio sockets in this process: an HTTP client library would be the
bottleneck long before the server) hold `GET /api/v1/stream` open. Once all are connected, this
process publishes one step record per `--interval` seconds on `jd.evt.<p>.<run>.step`, as the engine
does, and every client notes when it receives it. Latency is from the publish to a client's receipt
of that update; an update counts as delivered when every client has it. The web process's RSS is
read from /proc before the clients connect and at the end.

    .venv/bin/python bench/sse.py [--clients 1000 5000] [--updates 20] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import orjson
from machine import machine

from jetdag.engine import subjects as S
from jetdag.engine.nats.server import NatsServer
from jetdag.engine.nats.setup import Topology, close, connect, ensure

RESULTS = Path(__file__).parent / "results" / "sse.jsonl"
RUN_ID = "01BENCHSSE0000000000000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Clients:
    """N SSE connections; `seen[seq]` lists the receipt times of update `seq` over all clients."""

    def __init__(self) -> None:
        self.seen: dict[int, list[float]] = {}
        self.connected = 0
        self.failed: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.last = -1
        self.all_have_last = asyncio.Event()

    async def one(self, port: int, ready: asyncio.Event, n: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        except OSError as exc:
            self.failed.append(str(exc))
            return
        self.writers.append(writer)
        writer.write(
            f"GET /api/v1/stream?run={RUN_ID} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            self.failed.append(status.decode(errors="replace").strip())
            return
        while (await reader.readline()).strip():
            pass  # response headers
        self.connected += 1
        if self.connected == n:
            ready.set()
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                if line.startswith(b"data:") and b'"seq"' in line:
                    try:
                        seq = orjson.loads(line[5:])["seq"]
                    except Exception:
                        continue
                    got = self.seen.setdefault(seq, [])
                    got.append(time.perf_counter())
                    if seq == self.last and len(got) == n:
                        self.all_have_last.set()  # each stream is in order: everyone has every update

    def close(self) -> None:
        for w in self.writers:
            w.close()


async def trial(url: str, port: int, web: subprocess.Popen[bytes], n: int, args: argparse.Namespace) -> dict[str, Any]:
    nc = await connect(url, "bench-sse")
    clients = Clients()
    ready = asyncio.Event()
    rss_before = rss(web.pid)
    started = time.perf_counter()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(clients.one(port, ready, n)))
        if i % 200 == 199:
            await asyncio.sleep(0)  # let the server accept in step (not a synchronisation)
    try:
        await asyncio.wait_for(ready.wait(), 120)
    except TimeoutError:
        raise SystemExit(f"only {clients.connected} of {n} clients connected; failures: {clients.failed[:3]}") from None
    connect_s = time.perf_counter() - started
    sent: dict[int, float] = {}
    subject = S.step_subject(S.partition_of(RUN_ID), RUN_ID)
    base = 1_000_000 * n  # sequence numbers unique across trials
    clients.last = base + args.updates - 1
    for k in range(args.updates):
        seq = base + k
        step = {"k": "run.step", "run": RUN_ID, "seq": seq, "status": "running",
                "transitions": [{"task": "t", "from": "queued", "to": "running", "attempt": 1}]}  # fmt: skip
        sent[seq] = time.perf_counter()
        await nc.publish(subject, msgpack.packb(step))
        await asyncio.sleep(args.interval)  # the update rate under test, not a synchronisation
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(clients.all_have_last.wait(), 10)
    rss_after = rss(web.pid)
    lat = [t - sent[s] for s in sent for t in clients.seen.get(s, ())]
    complete = [max(clients.seen[s]) - sent[s] for s in sent if len(clients.seen.get(s, ())) >= n]
    clients.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await close(nc)
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
    return {
        "clients": n,
        "connect_s": round(connect_s, 2),
        "updates": args.updates,
        "delivered": len(lat),
        "expected": n * args.updates,
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "max_ms": round(max(lat, default=0.0) * 1000, 1),
        "all_clients_p50_ms": round(statistics.median(complete) * 1000, 1) if complete else None,
        "all_clients_max_ms": round(max(complete) * 1000, 1) if complete else None,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
    }


def start_web(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from jetdag.engine.cli import cli; cli()", "web", "--nats", url,
             "--http", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    trials = []
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as srv:
        nc = await connect(srv.url, "bench")
        await ensure(nc.jetstream(), Topology())
        await close(nc)
        port = free_port()
        web = start_web(srv.url, port, Path(tmp) / "web.log")
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                if time.monotonic() > deadline or web.poll() is not None:
                    raise SystemExit(f"the web process did not start:\n{(Path(tmp) / 'web.log').read_text()}")
                await asyncio.sleep(0.05)
            for n in args.clients:
                trials.append(await trial(srv.url, port, web, n, args))
        finally:
            web.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                web.wait(15)
            if web.poll() is None:
                web.kill()
    return {"bench": "sse", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "interval_s": args.interval,
            "trials": trials, "machine": machine()}  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000], help="clients per trial")
    parser.add_argument("--updates", type=int, default=20, help="updates published per trial (default 20)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between updates (default 1)")
    parser.add_argument("--json", action="store_true", help="print the record as JSON only")
    parser.add_argument("--no-save", action="store_true", help=f"do not append to {RESULTS}")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    record = asyncio.run(main(args))
    if not args.no_save:
        with RESULTS.open("ab") as f:
            f.write(orjson.dumps(record) + b"\n")
    if args.json:
        print(orjson.dumps(record).decode())
    else:
        m = record["machine"]
        print(f"sse: one web process, an update every {args.interval}s to every client of /api/v1/stream")
        print(f"  {'clients':>7} {'connect':>8} {'delivered':>12} {'p50':>8} {'p99':>8} {'max':>8} {'all p50':>8} "
              f"{'all max':>8} {'RSS':>14}")  # fmt: skip
        for t in record["trials"]:
            print(
                f"  {t['clients']:>7} {t['connect_s']:>7}s {t['delivered']:>6}/{t['expected']:<6}"
                f"{t['p50_ms']:>6}ms {t['p99_ms']:>6}ms {t['max_ms']:>6}ms {t['all_clients_p50_ms']!s:>6}ms "
                f"{t['all_clients_max_ms']!s:>6}ms {t['rss_before_mb']:>5}→{t['rss_after_mb']}MB"
            )
        print(f"  on {m.get('cpu')}, {m.get('cores')} cores, Python {m.get('python')}")
