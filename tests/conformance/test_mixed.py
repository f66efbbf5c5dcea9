"""One DAG across languages: the real engine with its Python worker on queue `default`, the Node worker on queue
`node`; results flow from Python tasks into Node tasks' payloads (templates) and back."""

from __future__ import annotations

from pathlib import Path

from jetdag.actors.system import System
from jetdag.engine.client import Client
from jetdag.engine.model import RetryPolicy, TaskSpec, WorkflowSpec
from tests.conformance.harness import QUEUE, Conformance, Implementation

ECHOED = {"from": "{result:a}", "slept": "{result:a.slept}", "who": "{param:who}", "text": "a={result:a}"}
"""The payload of the Node task: templates the engine renders at dispatch (engine/templates.py)."""


async def test_a_dag_mixes_python_and_node_tasks(nats_url: str, tmp_path: Path) -> None:
    spec = WorkflowSpec(
        "t_conf_mixed",
        (
            TaskSpec("a", "sleep", payload={"seconds": 0.01}),  # Python (built-in): {"slept": 0.01}
            TaskSpec("b", "echo", queue=QUEUE, payload=ECHOED, depends_on=("a",)),  # Node, with a's result
            TaskSpec("c", "sleep", queue=QUEUE, payload={"seconds": 0.05}, depends_on=("a",)),  # Node's sleep: None
            TaskSpec("d", "noop", depends_on=("b", "c")),  # Python again, after both Node tasks
        ),
        retry=RetryPolicy(max_attempts=1),
    )
    async with System(nats_url, queues=["default"]) as system, await Client.connect(nats_url) as client:
        assert system.worker is not None
        node = Conformance(Implementation("node"), nats_url, client.nc, client.js, tmp_path)
        try:
            await node.start()
            entries = await node.entries()
            (node_id,) = [k for k, info in entries.items() if QUEUE in info["queues"]]

            await client.apply(spec)
            run_id = await client.submit(spec.name, {"who": "mixed"})
            view = await client.wait(run_id, timeout=30)
        finally:
            node.stop_all()

    assert view["status"] == "succeeded", (view, node.logs())
    tasks = view["tasks"]
    assert {name: t["status"] for name, t in tasks.items()} == dict.fromkeys("abcd", "succeeded")
    assert tasks["a"]["result"] == {"slept": 0.01}
    assert tasks["b"]["result"] == {"from": {"slept": 0.01}, "slept": 0.01, "who": "mixed", "text": 'a={"slept":0.01}'}
    assert tasks["c"].get("result") is None
    assert tasks["b"]["worker"] == tasks["c"]["worker"] == node_id
    assert tasks["a"]["worker"] == tasks["d"]["worker"] == system.worker.id
