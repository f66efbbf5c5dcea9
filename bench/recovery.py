"""Recovery: time from `kill -9` of the engine until every live run makes progress again.

nats-server, `jetdag engine` and one `jetdag worker` as separate processes. N runs of a chain of
`--steps` built-in `sleep` tasks (`--sleep` seconds each) are in flight when the engine is killed
(`kill -9`, at a random moment once every run has started). Two ways back:

- restart: the engine is started again at once with the same `--engine-id`; it takes its own
  leases back without waiting for them to expire.
- takeover: a second engine (another id) has been running all along, and the two split the 16
  partitions 8/8; the survivor takes each of the killed engine's leases once it expires (the
  lease TTL, 6 s). Only the runs on the killed engine's partitions are timed.

A run has made progress when the engine publishes a step record for it (a core subscription on
`jd.evt.*.*.step`, as bench/throughput.py does) with a sequence number above the last one the
killed engine published. Everything the killed engine published is in by `GRACE` seconds after
the kill: a restarted engine needs longer than that just to import.

    .venv/bin/python bench/recovery.py [-n 200] [--steps 10] [--sleep 0.2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
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
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.nats.server import NatsServer
from jetdag.engine.nats.setup import Topology, close, connect, ensure

RESULTS = Path(__file__).parent / "results" / "recovery.jsonl"
GRACE = 0.25
"""Seconds after the kill by which every step record of the killed engine has arrived."""


def spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    code = "from jetdag.engine.cli import cli; cli()"
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


async def until(check: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(interval)


class Steps:
    """The last step record seen per run, and when each watched run first went past a given step."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.status: dict[str, str] = {}
        self.after: dict[str, int] = {}  # run -> the seq it must go past
        self.progressed: dict[str, float] = {}
        self.all_progressed = asyncio.Event()

    async def on_step(self, msg: Any) -> None:
        step = msgpack.unpackb(msg.data)
        run, seq = step["run"], step["seq"]
        if seq > self.seq.get(run, -1):
            self.seq[run], self.status[run] = seq, step["status"]
        if run in self.after and run not in self.progressed and seq > self.after[run]:
            self.progressed[run] = time.perf_counter()
            if len(self.progressed) == len(self.after):
                self.all_progressed.set()

    def watch(self, runs: list[str]) -> None:
        self.after = {r: self.seq[r] for r in runs}
        if not runs:
            self.all_progressed.set()


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if len(values) > 1 else values[0]


async def holders(js: Any) -> dict[int, str]:
    """partition -> the id of the engine holding its lease, for the partitions held now."""
    kv = await js.key_value(S.LEASES_KV)
    out: dict[int, str] = {}
    for p in range(S.DEFAULT_PARTITIONS):
        with contextlib.suppress(Exception):
            entry = await kv.get(S.lease_key(p))
            if entry.value:
                out[p] = entry.value.decode()
    return out


async def leases_held_by(js: Any, engine_id: str) -> bool:
    held = await holders(js)
    return len(held) == S.DEFAULT_PARTITIONS and set(held.values()) == {engine_id}


async def split_evenly(js: Any) -> bool:
    held = await holders(js)
    return len(held) == S.DEFAULT_PARTITIONS and list(held.values()).count("bench-a") == S.DEFAULT_PARTITIONS // 2


def connected(log: Path) -> bool:
    """`serve_roles` says so once the engine has looked at every partition."""
    return log.exists() and b"connected to" in log.read_bytes()


async def one(variant: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    spec = WorkflowSpec(
        "bench_recovery",
        tuple(
            TaskSpec(f"s{i}", "sleep", payload={"seconds": args.sleep}, depends_on=(f"s{i - 1}",) if i else ())
            for i in range(args.steps)
        ),
    )
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as srv:
        logs = Path(tmp)
        nc = await connect(srv.url, "bench")
        js = nc.jetstream()
        await ensure(js, Topology())
        procs = [spawn(logs / "worker.log", "worker", "--nats", srv.url, "--concurrency", str(max(64, 2 * args.n)))]
        try:
            procs.append(spawn(logs / "a.log", "engine", "--nats", srv.url, "--engine-id", "bench-a"))
            await until(lambda: leases_held_by(js, "bench-a"), 30, "engine a did not take the leases")
            if variant == "takeover":
                procs.append(spawn(logs / "b.log", "engine", "--nats", srv.url, "--engine-id", "bench-b"))
                await until(lambda: asyncio.to_thread(connected, logs / "b.log"), 30, "engine b did not start")
                await until(lambda: split_evenly(js), 60, "engines a and b did not split the partitions")
            on_a = {p for p, engine in (await holders(js)).items() if engine == "bench-a"}
            steps = Steps()
            sub = await nc.subscribe("jd.evt.*.*.step", cb=steps.on_step)
            client = await Client.connect(srv.url)
            await client.apply(spec)
            runs = [await client.submit(spec.name) for _ in range(args.n)]

            async def all_started() -> bool:
                return all(steps.seq.get(r, -1) >= 2 for r in runs)

            await until(all_started, 60, "the runs did not start")
            await asyncio.sleep(rng.uniform(0.2, 1.0))  # the fault's moment
            killed_at = time.perf_counter()
            procs[1].kill()
            procs[1].wait(10)
            if variant == "restart":
                procs.append(spawn(logs / "a2.log", "engine", "--nats", srv.url, "--engine-id", "bench-a"))
            await asyncio.sleep(GRACE)  # the killed engine's last step records arrive
            live = [r for r in runs if steps.status.get(r) == "running" and S.partition_of(r) in on_a]
            steps.watch(live)
            await asyncio.wait_for(steps.all_progressed.wait(), 120)
            took = sorted(steps.progressed[r] - killed_at for r in live)

            async def all_done() -> bool:
                return all(steps.status.get(r) == "succeeded" for r in runs)

            await until(all_done, 120, "not every run succeeded", interval=0.1)
            done_at = time.perf_counter() - killed_at
            await sub.unsubscribe()
            await client.close()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            await close(nc)
    return {
        "variant": variant,
        "live": len(live),
        "first_s": round(took[0], 3),
        "p50_s": round(percentile(took, 50), 3),
        "p90_s": round(percentile(took, 90), 3),
        "all_s": round(took[-1], 3),
        "all_succeeded_s": round(done_at, 3),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    trials = [await one(v, args, seed) for v in args.variants for seed in range(args.repeat)]
    return {
        "bench": "recovery",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": args.n,
        "steps": args.steps,
        "sleep_s": args.sleep,
        "lease_ttl_s": Topology().lease_ttl,
        "trials": trials,
        "machine": machine(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="runs in flight (default 200)")
    parser.add_argument("--steps", type=int, default=10, help="tasks per run, a chain (default 10)")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds each task sleeps (default 0.2)")
    parser.add_argument("--repeat", type=int, default=3, help="kills per variant (default 3)")
    parser.add_argument("--variants", nargs="+", default=["restart", "takeover"], choices=["restart", "takeover"])
    parser.add_argument("--json", action="store_true", help="print the record as JSON only")
    parser.add_argument("--no-save", action="store_true", help=f"do not append to {RESULTS}")
    args = parser.parse_args()
    record = asyncio.run(main(args))
    if not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("ab") as f:
            f.write(orjson.dumps(record) + b"\n")
    if args.json:
        print(orjson.dumps(record).decode())
    else:
        m = record["machine"]
        print(f"recovery: {args.n} runs of a {args.steps}-step chain of {args.sleep}s sleeps in flight, kill -9 of "
              f"the engine; seconds from the kill until runs make progress "
              f"(lease TTL {record['lease_ttl_s']}s)")  # fmt: skip
        print(f"  {'variant':<9} {'live':>5} {'first':>7} {'p50':>7} {'p90':>7} {'all':>7} {'all done':>9}")
        for t in record["trials"]:
            print(f"  {t['variant']:<9} {t['live']:>5} {t['first_s']:>7} {t['p50_s']:>7} {t['p90_s']:>7}"
                  f" {t['all_s']:>7} {t['all_succeeded_s']:>9}")  # fmt: skip
        print(f"  on {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Python {m['python']}, {m['nats_server']}")
