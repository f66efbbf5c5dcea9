"""Recovery: time from `kill -9` of the engine until every live run makes progress again.

nats-server, `jetdag engine` and one `jetdag worker` as separate processes. N runs of a chain of
`--steps` built-in `sleep` tasks (`--sleep` seconds each) are in flight when the engine is killed
(`kill -9`, at a random moment once every run has started). Two ways back:

- restart: the engine is started again at once with the same `--engine-id`; it takes its own
  leases back without waiting for them to expire.
- takeover: a second engine (another id) has been running all along, and the two split the 16
  partitions 8/8; the survivor takes each of the killed engine's leases once it expires (the
  lease TTL, 6 s). Only the runs on the killed engine's partitions are timed.

In both, the new owner of a partition rewinds its consumer to the ack floor when that is cheap
(engine/nats/rewind.py): the events the killed engine had taken and not acked come back at once,
not after the consumer's AckWait (6 s).

A run has made progress when the engine publishes a step record for it (a core subscription on
`jd.evt.*.*.step`, as bench/throughput.py does) with a sequence number above the last one the
killed engine published. Everything the killed engine published is in by `GRACE` seconds after
the kill: a restarted engine needs longer than that just to import.

    jetdag bench recovery [-n 200] [--steps 10] [--sleep 0.2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from typing import Any

import harness
from harness import Stack, percentile, until

from jetdag.engine import subjects as S
from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec
from jetdag.engine.nats.setup import Topology

GRACE = 0.25
"""Seconds after the kill by which every step record of the killed engine has arrived."""


class Steps(harness.Steps):
    """Also: when each watched run first went past a given step."""

    def __init__(self) -> None:
        super().__init__()
        self.after: dict[str, int] = {}  # run -> the seq it must go past
        self.progressed: dict[str, float] = {}
        self.all_progressed = asyncio.Event()

    def seen(self, step: dict[str, Any], at: float) -> None:
        super().seen(step, at)
        run, seq = step["run"], step["seq"]
        if run in self.after and run not in self.progressed and seq > self.after[run]:
            self.progressed[run] = at
            if len(self.progressed) == len(self.after):
                self.all_progressed.set()

    def watch(self, runs: list[str]) -> None:
        self.after = {r: self.seq[r] for r in runs}
        if not runs:
            self.all_progressed.set()


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


def connected(s: Stack, name: str) -> bool:
    """`serve_roles` says so once the engine has looked at every partition."""
    log = s.log(name)
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
    async with Stack() as s:
        js = s.js
        s.workers(1, max(64, 2 * args.n))
        engine_a = s.engine("a", engine_id="bench-a")
        await until(lambda: leases_held_by(js, "bench-a"), 30, "engine a did not take the leases")
        if variant == "takeover":
            s.engine("b", engine_id="bench-b")
            await until(lambda: asyncio.to_thread(connected, s, "b"), 30, "engine b did not start")
            await until(lambda: split_evenly(js), 60, "engines a and b did not split the partitions")
        on_a = {p for p, engine in (await holders(js)).items() if engine == "bench-a"}
        steps = Steps()
        await s.nc.subscribe("jd.evt.*.*.step", cb=steps.on_step)
        await s.nc.flush()
        async with await Client.connect(s.url) as client:
            await client.apply(spec)
            runs = [await client.submit(spec.name) for _ in range(args.n)]

        async def all_started() -> bool:
            return all(steps.seq.get(r, -1) >= 2 for r in runs)

        await until(all_started, 60, "the runs did not start")
        await asyncio.sleep(rng.uniform(0.2, 1.0))  # the fault's moment
        killed_at = time.perf_counter()
        engine_a.kill()
        engine_a.wait(10)
        if variant == "restart":
            s.engine("a2", engine_id="bench-a")
        await asyncio.sleep(GRACE)  # the killed engine's last step records arrive
        live = [r for r in runs if steps.status.get(r) == "running" and S.partition_of(r) in on_a]
        steps.watch(live)
        await asyncio.wait_for(steps.all_progressed.wait(), 120)
        took = sorted(steps.progressed[r] - killed_at for r in live)
        await steps.wait(runs, 120)
        done_at = max(steps.finished[r] for r in runs) - killed_at
    return {
        "variant": variant,
        "live": len(live),
        "first_s": round(took[0], 3),
        "p50_s": round(percentile(took, 50), 3),
        "p90_s": round(percentile(took, 90), 3),
        "all_s": round(took[-1], 3),
        "all_succeeded_s": round(done_at, 3),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    trials = [await one(v, args, seed) for v in args.variants for seed in range(args.repeat)]
    return harness.record(
        "recovery",
        runs=args.n,
        steps=args.steps,
        sleep_s=args.sleep,
        lease_ttl_s=Topology().lease_ttl,
        trials=trials,
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__, "recovery")
    parser.add_argument("-n", type=int, default=200, help="runs in flight (default 200)")
    parser.add_argument("--steps", type=int, default=10, help="tasks per run, a chain (default 10)")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds each task sleeps (default 0.2)")
    parser.add_argument("--repeat", type=int, default=3, help="kills per variant (default 3)")
    parser.add_argument("--variants", nargs="+", default=["restart", "takeover"], choices=["restart", "takeover"])
    args = parser.parse_args(argv)
    rec = harness.run(measure(args))
    title = (
        f"recovery: {args.n} runs of a {args.steps}-step chain of {args.sleep}s sleeps in flight, kill -9 of the "
        f"engine; seconds from the kill until runs make progress (lease TTL {rec['lease_ttl_s']}s)"
    )
    columns = ["variant", "live", "first", "p50", "p90", "all", "all done"]
    rows = [[t["variant"], t["live"], t["first_s"], t["p50_s"], t["p90_s"], t["all_s"], t["all_succeeded_s"]]
            for t in rec["trials"]]  # fmt: skip
    harness.finish(args, rec, title, columns, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
