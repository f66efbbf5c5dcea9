"""Echo throughput of the Node worker against the Python reference worker: each on a nats-server of its own,
a burst of TASKS `echo` tasks (published once the worker beats) run with concurrency 64; tasks/s from the first
publish until JD_TASKS is empty (every task acked, so every result stored before it).

    .venv/bin/python deploy/workers/node/bench_echo.py [--tasks 2000] [--concurrency 64] [--rounds 1]
                                                       [--only node|python]

With `--rounds N` the same worker takes N bursts one after the other: the first one of a fresh Node process runs
before V8 has compiled its hot paths (the Python worker has no such warm-up), the later ones show it warm.

Run from the repository root (the Python worker imports its handlers from tests/conformance/handlers.py);
the Node worker needs `cd deploy/workers/node && npm ci` first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from jetdag.engine import subjects as S  # noqa: E402
from jetdag.engine.messages import MSG_ID, encode_task  # noqa: E402
from jetdag.engine.nats.server import NatsServer  # noqa: E402
from jetdag.engine.nats.setup import close, connect, ensure  # noqa: E402
from tests.conformance.harness import QUEUE, Conformance, Implementation  # noqa: E402
from tests.helpers import stream_messages  # noqa: E402


async def bench(name: str, tasks: int, concurrency: int, rounds: int = 1) -> list[tuple[float, float]]:
    """(tasks/s, seconds the publishing took) of each burst of one implementation."""
    out: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="jetdag-bench-") as root:
        server = NatsServer(Path(root) / "nats")
        server.start()
        try:
            nc = await connect(server.url, "bench")
            js = nc.jetstream()
            await ensure(js)
            conf = Conformance(Implementation(name), server.url, nc, js, Path(root))
            try:
                await conf.start(concurrency=concurrency)
                for _ in range(rounds):
                    out.append(await burst(conf, tasks))
            finally:
                conf.stop_all()
                await close(nc)
        finally:
            server.stop()
    return out


async def burst(conf: Conformance, tasks: int) -> tuple[float, float]:
    template = conf.task("echo", None)
    subject = S.task_subject(QUEUE, 5, "echo")
    bodies = [encode_task(conf.task("echo", {"i": i}, run_id=template.run_id, task=f"t{i}")) for i in range(tasks)]
    began = time.perf_counter()
    for at in range(0, tasks, 500):  # JetStream publishes, 500 awaiting their acks at once
        await asyncio.gather(*(conf.js.publish(subject, body) for body in bodies[at : at + 500]))
    published = time.perf_counter() - began
    while await conf.tasks_left():  # noqa: ASYNC110  (polling NATS: no event to wait on)
        await asyncio.sleep(0.005)  # wait-ok: a poll; what it measures is the worker's
    elapsed = time.perf_counter() - began
    replies = await stream_messages(conf.js, S.EVENTS, template.reply)
    results = sum(1 for m in replies if m.headers and m.headers[MSG_ID].endswith(":result"))
    if results != tasks:
        raise SystemExit(f"{conf.impl.name}: {results} results for {tasks} tasks\n{conf.logs()}")
    return tasks / elapsed, published


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="bursts per worker, one after the other")
    parser.add_argument("--only", choices=["node", "python"])
    args = parser.parse_args()
    for name in [args.only] if args.only else ["python", "node"]:
        for n, (rate, published) in enumerate(await bench(name, args.tasks, args.concurrency, args.rounds), 1):
            print(
                f"{name:7} {rate:8.0f} tasks/s  (burst {n}: {args.tasks} echo tasks, concurrency {args.concurrency};"
                f" publishing took {published:.2f}s)",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
