"""A workflow written in Python (Goflow style), with a handler of its own and templated payloads.

`jetdag up` loads this file like any definition; loading it also registers the `stamp` handler
in that process, which is why its worker can run it (elsewhere: `jetdag worker --import MODULE`).
"""

from typing import Any

from jetdag.engine.handlers import TaskContext, handler
from jetdag.engine.workflow import Task, Workflow


@handler("stamp")
def stamp(ctx: TaskContext) -> dict[str, Any]:
    """Report what the task was given: its rendered payload, info string and job."""
    return {"job": ctx.job, "info": ctx.info, "payload": ctx.payload}


wf = Workflow(
    name="ingest",
    description="Lists a directory, then records the listing's size; the day comes from the run's logical time.",
    params={"dir": "/etc"},
)
listing = wf.add(Task("list", handler="command", payload={"argv": ["ls", "{param:dir}"]}))
record = wf.add(
    Task(
        "record",
        handler="stamp",
        payload={"day": "{yyyy}-{mm}-{dd}", "exit_code": "{result:list.exit_code}"},
        template="?dir={param:dir}",
    )
)
listing >> record
