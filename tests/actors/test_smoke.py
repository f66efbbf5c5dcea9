from jetdag.engine.client import Client
from jetdag.engine.model import TaskSpec, WorkflowSpec


async def test_a_diamond_of_noops_succeeds(client: Client) -> None:
    spec = WorkflowSpec(
        "diamond",
        (
            TaskSpec("a", "noop"),
            TaskSpec("b", "noop", depends_on=("a",)),
            TaskSpec("c", "noop", depends_on=("a",)),
            TaskSpec("d", "noop", depends_on=("b", "c")),
        ),
    )
    await client.apply(spec)
    view = await client.wait(await client.submit("diamond"), timeout=10)
    assert view["status"] == "succeeded"
    assert {n: t["attempts"] for n, t in view["tasks"].items()} == {"a": 1, "b": 1, "c": 1, "d": 1}
