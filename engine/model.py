"""The workflow model every definition format compiles to: frozen, validated, msgpack-able."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from functools import cache, cached_property, lru_cache
from typing import Any

from jetdag.engine import templates
from jetdag.engine.subjects import DEFAULT_PRIORITY


class TriggerRule(StrEnum):
    """When a task may run, given how its upstream tasks ended (Airflow/Goflow semantics)."""

    ALL_SUCCESS = "all_success"
    ALL_DONE = "all_done"
    ALL_FAILED = "all_failed"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    NONE_FAILED = "none_failed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how fast a failed task is tried again."""

    max_attempts: int = 3
    """Attempts in all, the first included; 1 means never retry."""
    initial_delay: float = 1.0
    """Seconds before the second attempt."""
    max_delay: float = 300.0
    """Upper bound of any delay, in seconds."""
    backoff_factor: float = 2.0
    """Each delay is the previous one times this."""
    jitter: float = 0.1
    """Fraction of the delay added or taken at random (0.1 = ±10%)."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One node of a workflow's DAG."""

    name: str
    handler: str
    queue: str = "default"
    payload: Any = None
    depends_on: tuple[str, ...] = ()
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    priority: int = DEFAULT_PRIORITY
    retry: RetryPolicy | None = None
    """None: the workflow's policy applies."""
    timeout: float | None = None
    """Seconds one attempt may run before the worker stops it and it counts as failed."""
    no_alert: bool = False
    require: tuple[str, ...] = ()
    """Template keys (`{meta:file}`) that must render non-empty, else the task is skipped."""
    template: str | None = None
    """flowlord's info string, rendered at dispatch and handed to the handler as `ctx.info`."""
    job: str | None = None
    """flowlord's job: the part after `:` in `task = "topic:job"`; handed to the handler as `ctx.job`."""
    requires: Mapping[str, str] = field(default_factory=dict)
    """Labels a worker must have to run the task (`{"gpu": "true"}`): only such workers receive it."""


class BatchBy(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class Catchup(StrEnum):
    """Which ticks a clock trigger fires when it finds some missed (the engines were down past their time)."""

    NONE = "none"
    """None of them: the schedule goes on from its next tick."""
    LATEST = "latest"
    """The most recent one, unless a tick on time supersedes it."""
    ALL = "all"
    """Every one within `catchup_window`, oldest first."""


class Overlap(StrEnum):
    """What a tick does when the run its schedule started last is still going (Temporal's overlap policies)."""

    ALLOW = "allow"
    """Start anyway: runs of one schedule may overlap (cron's way)."""
    SKIP = "skip"
    """Start nothing for this tick."""
    BUFFER_ONE = "buffer_one"
    """Start it once the previous run ends; a further tick meanwhile is skipped."""
    CANCEL_PREVIOUS = "cancel_previous"
    """Cancel the previous run, then start this one."""


@dataclass(frozen=True, slots=True)
class Batch:
    """flowlord batching: one firing starts several runs, one per time step or per meta row."""

    span: float | None = None
    """`for`: seconds from the logical time to the last step (negative looks back)."""
    by: BatchBy = BatchBy.DAY
    meta: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """`meta=name:a,b|value:1,2`: row i has name=a[i], value=b[i]; every list has the same length."""
    meta_file: str | None = None
    """A JSON-lines or CSV file; each row is the meta of one run."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """What starts runs of a workflow without anyone asking: a clock, a file, a message.

    Firing them belongs to the scheduler and the file watcher; the model only says what they are.
    """

    cron: str | None = None
    """5 fields, 6 with the seconds first (as flowlord, Quartz and Goflow write them), or @daily and the like."""
    timezone: str | None = None
    """The IANA zone the cron's wall-clock times are in; None is UTC."""
    catchup: Catchup = Catchup.NONE
    catchup_window: float = 86400.0
    """Seconds back from now within which `catchup: all` fires missed ticks."""
    overlap: Overlap = Overlap.ALLOW
    files: tuple[str, ...] = ()
    subject: str | None = None
    """A NATS subject whose messages start runs (`on_message`)."""
    offset: float = 0.0
    """Seconds added to the firing time to get the run's logical time (templates' {yyyy}…)."""
    batch: Batch | None = None
    start: tuple[str, ...] = ()
    """Tasks a fired run begins at (flowlord: the phase that carries the rule); () = the roots."""

    def key(self, kind: str) -> str:
        """The name a trigger's `kind` of firing ("cron", "files", "message") goes by in `jd_schedules` and in
        the ids of the runs it starts: the kind, and the phase it starts at when it has one ("cron:extract")."""
        return f"{kind}:{','.join(self.start)}" if self.start else kind


@dataclass(frozen=True)
class WorkflowSpec:
    """A validated workflow: a name and a DAG of tasks in dependency order."""

    name: str
    """The id: a subject token and KV key (see subjects.workflow_key)."""
    tasks: tuple[TaskSpec, ...]
    title: str = ""
    """The name as written when it is not a valid id ("My Workflow" has the id My-Workflow)."""
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    """Whole-run deadline in seconds."""
    max_concurrency: int | None = None
    """At most this many tasks of one run queued or running at once."""
    max_active_runs: int | None = None
    """At most this many runs of the workflow started and not finished; later ones wait `pending`, first come
    first served."""
    triggers: tuple[Trigger, ...] = ()

    @cached_property
    def by_name(self) -> dict[str, TaskSpec]:
        return {t.name: t for t in self.tasks}

    @cached_property
    def children(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {t.name: [] for t in self.tasks}
        for t in self.tasks:
            for parent in t.depends_on:
                out[parent].append(t.name)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def roots(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks if not t.depends_on)

    @cached_property
    def templated(self) -> frozenset[str]:
        """Tasks whose payload or template holds template keys: only these are rendered at dispatch."""
        return frozenset(t.name for t in self.tasks if templates.has_keys(t.payload) or templates.has_keys(t.template))

    @property
    def schedule(self) -> str | None:
        """The first cron trigger's expression, for listings."""
        return next((t.cron for t in self.triggers if t.cron), None)

    def retry_of(self, task: TaskSpec) -> RetryPolicy:
        return task.retry or self.retry

    def to_dict(self) -> dict[str, Any]:
        """A plain map (msgpack/JSON-able) that from_dict turns back into an equal spec.

        Built once per spec and shared: callers serialize it and must not change it. (Every snapshot
        of a one-task run carries its spec; `dataclasses.asdict` there was a sixth of the engine's CPU.)
        """
        return self._plain

    @cached_property
    def _plain(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(self)
        return plain

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkflowSpec:
        """The spec `d` describes; `d` then serves as its `to_dict()` (the caller hands it over: a snapshot
        or a message decoded for this alone), which spares every run actor a rebuild per snapshot."""
        tasks = tuple(
            TaskSpec(
                **{
                    **t,
                    "depends_on": tuple(t.get("depends_on", ())),
                    "require": tuple(t.get("require", ())),
                    "trigger_rule": TriggerRule(t.get("trigger_rule", TriggerRule.ALL_SUCCESS)),
                    "retry": RetryPolicy(**t["retry"]) if t.get("retry") else None,
                }
            )
            for t in d["tasks"]
        )
        rest = {k: v for k, v in d.items() if k not in ("tasks", "retry", "triggers")}
        spec = cls(
            tasks=tasks,
            retry=RetryPolicy(**d["retry"]) if d.get("retry") else RetryPolicy(),
            triggers=tuple(_trigger(t) for t in d.get("triggers", ())),
            **rest,
        )
        spec.__dict__["_plain"] = d  # what cached_property would store
        return spec


def one_task_spec(handler: str, queue: str, payload: Any, priority: int) -> dict[str, Any]:
    """The plain map of a workflow of one task (an enqueued handler call), as `WorkflowSpec.to_dict()`
    gives it: built from a cached template, since every enqueued message needs one."""
    template = _one_task_template(handler, queue, priority)
    return {**template, "tasks": ({**template["tasks"][0], "payload": payload},)}


@lru_cache(maxsize=1024)
def _one_task_template(handler: str, queue: str, priority: int) -> dict[str, Any]:
    task = TaskSpec(name=handler, handler=handler, queue=queue, priority=priority)
    return _plain(WorkflowSpec(name=handler, tasks=(task,)))


def _plain(value: Any) -> Any:
    """`dataclasses.asdict` without its deep copy of every leaf (our leaves are immutable or rebuilt here)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _trigger(d: dict[str, Any]) -> Trigger:
    batch = d.get("batch")
    if batch is not None:
        meta = {k: tuple(v) for k, v in batch.get("meta", {}).items()}
        batch = Batch(**{**batch, "by": BatchBy(batch.get("by", BatchBy.DAY)), "meta": meta})
    catchup = d.get("catchup", Catchup.NONE)
    if isinstance(catchup, bool):  # stored before catchup had policies: true fired every missed tick
        catchup = Catchup.ALL if catchup else Catchup.NONE
    return Trigger(
        **{
            **d,
            "files": tuple(d.get("files", ())),
            "start": tuple(d.get("start", ())),
            "batch": batch,
            "catchup": Catchup(catchup),
            "overlap": Overlap(d.get("overlap", Overlap.ALLOW)),
        }
    )


def topological_order(tasks: dict[str, tuple[str, ...]]) -> list[str]:
    """Names in dependency order, or raise CycleFound with one cycle. `tasks` maps name -> parents."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in tasks:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            parents = [p for p in tasks.get(node, ()) if p in tasks]
            if i < len(parents):
                stack.append((node, i + 1))
                nxt = parents[i]
                if state.get(nxt) == 1:
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise CycleFound(list(reversed(cycle)))
                if not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()
                order.append(node)
    return order


class CycleFound(Exception):
    """The DAG has a cycle; `cycle` lists it in dependency order, first name repeated at the end."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__(" -> ".join(cycle))
