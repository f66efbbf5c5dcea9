"""Workflows built in Python (Goflow style): add tasks, wire them with `>>`, get a WorkflowSpec.

    wf = Workflow(name="etl")
    a = wf.add(Task("a", handler="command", payload={"argv": ["echo", "hi"]}))
    b, c = wf.add(Task("b", handler="noop")), wf.add(Task("c", handler="noop"))
    a >> [b, c]
    spec = wf.spec()

The rules are those of YAML files (jetdag.engine.definitions.checks); errors point at the line
that created the Workflow or added the faulty Task.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload

from jetdag.engine.definitions import checks, triggers
from jetdag.engine.definitions.checks import At, Invalid, WrongValue
from jetdag.engine.errors import DefinitionError, DefinitionWarning
from jetdag.engine.model import Catchup, Overlap, RetryPolicy, TaskSpec, TriggerRule, WorkflowSpec
from jetdag.engine.subjects import DEFAULT_PRIORITY, HANDLER_RULE, is_handler_name, workflow_key

__all__ = ["Task", "Workflow"]

T = TypeVar("T")
D = TypeVar("D")


def _caller() -> At:
    """The first frame outside this module: the user's line that built or wired something."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return At(frame.f_code.co_filename, frame.f_lineno, 1)


def _as_handler(value: object) -> str:
    # A function registered with @handler carries the name it was registered under.
    name = getattr(value, "__jetdag_handler__", value)
    if not isinstance(name, str):
        raise WrongValue("a handler name or a function registered with @handler", value)
    if not is_handler_name(name):
        raise WrongValue(f"a handler name of {HANDLER_RULE}", value)
    return name


def _names(value: str | Task | Iterable[str | Task]) -> list[Any]:
    items = [value] if isinstance(value, str | Task) else list(value)
    return [i.name if isinstance(i, Task) else i for i in items]


class Task:
    """One task of a Workflow. `a >> b` makes b run after a; `a >> [b, c]` and `[b, c] >> d` fan out and in."""

    def __init__(
        self,
        name: str,
        handler: str | Callable[..., Any],
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = DEFAULT_PRIORITY,
        trigger_rule: TriggerRule | str = TriggerRule.ALL_SUCCESS,
        depends_on: str | Task | Iterable[str | Task] = (),
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | str | None = None,
        template: str | None = None,
        require: str | Iterable[str] = (),
        no_alert: bool = False,
        job: str | None = None,
        requires: dict[str, str | bool | int] | None = None,
    ) -> None:
        self.name, self.handler, self.payload = name, handler, payload
        self.queue, self.priority, self.trigger_rule = queue, priority, trigger_rule
        self.max_retries, self.retry, self.timeout = max_retries, retry, timeout
        self.template, self.require, self.no_alert, self.job = template, require, no_alert, job
        self.requires = requires
        self.defined_at = _caller()
        self.added_at: At | None = None
        self.upstream: list[tuple[str, At]] = [(n, self.defined_at) for n in _names(depends_on)]
        """Names this task depends on, each with the line that said so."""

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    @overload
    def __rshift__(self, other: Task) -> Task: ...
    @overload
    def __rshift__(self, other: Sequence[Task]) -> list[Task]: ...
    def __rshift__(self, other: Task | Sequence[Task]) -> Task | list[Task]:
        at = _caller()
        for task in [other] if isinstance(other, Task) else other:
            task.upstream.append((self.name, at))
        return other if isinstance(other, Task) else list(other)

    def __rrshift__(self, other: Sequence[Task]) -> Task:
        at = _caller()
        self.upstream.extend((name, at) for name in _names(other))
        return self


class Workflow:
    """A workflow under construction; `spec()` checks it and returns the frozen WorkflowSpec."""

    def __init__(
        self,
        name: str,
        description: str = "",
        schedule: str | None = None,
        params: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | str | None = None,
        max_concurrency: int | None = None,
        *,
        timezone: str | None = None,
        catchup: Catchup | str | bool | None = None,
        catchup_window: float | str | None = None,
        overlap: Overlap | str | None = None,
        max_active_runs: int | None = None,
        files: str | Sequence[str] = (),
        on_message: str | None = None,
        offset: float | str | None = None,
    ) -> None:
        self.name, self.description, self.schedule, self.params = name, description, schedule, params
        self.retry, self.timeout, self.max_concurrency = retry, timeout, max_concurrency
        self.timezone, self.catchup, self.catchup_window, self.overlap = timezone, catchup, catchup_window, overlap
        self.max_active_runs, self.files, self.on_message, self.offset = max_active_runs, files, on_message, offset
        self.origin = _caller()
        self._tasks: list[Task] = []
        self._edges: list[tuple[str | Task, str | Task, At]] = []

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, tasks={[t.name for t in self._tasks]})"

    @property
    def tasks(self) -> tuple[Task, ...]:
        return tuple(self._tasks)

    def add(self, task: Task) -> Task:
        """Add `task` and return it, so `a = wf.add(Task(...))` reads naturally."""
        task.added_at = _caller()
        self._tasks.append(task)
        return task

    def set_downstream(self, upstream: str | Task, downstream: str | Task) -> None:
        """Make `downstream` run after `upstream`; either may be a Task or a task's name."""
        self._edges.append((upstream, downstream, _caller()))

    def spec(self) -> WorkflowSpec:
        """The checked, frozen workflow; DefinitionErrors lists every fault with its source line."""
        return self.check()[0]

    def check(self) -> tuple[WorkflowSpec, tuple[DefinitionWarning, ...]]:
        """Like spec(), and the warnings the workflow deserves though it is valid (at the Workflow(...) line)."""
        check = _Checker()
        at = self.origin
        name = check.required(at, "name", "", checks.as_workflow_name, self.name)
        where = f" in workflow {self.name!r}"
        retry = check.retry(at, where, f" in the retry of workflow {self.name!r}", self.retry, RetryPolicy())
        if not self._tasks:
            check.errors.append(
                checks.error(at, f"workflow {self.name!r} has no tasks: add them with wf.add(Task(...))")
            )
        params = self.params if self.params is not None else {}
        if not isinstance(params, Mapping):
            check.errors.append(checks.error(at, WrongValue("a mapping", params).message("params", where)))
        description = check.take(at, "description", where, checks.as_str, self.description, "")
        schedule = check.take(at, "schedule", where, triggers.as_cron, self.schedule, None)
        timezone = check.take(at, "timezone", where, triggers.as_timezone, self.timezone, None)
        default = triggers.DEFAULT
        catchup = check.take(at, "catchup", where, triggers.as_catchup, self.catchup, default.catchup)
        window = check.take(
            at, "catchup_window", where, triggers.as_catchup_window, self.catchup_window, default.catchup_window
        )
        overlap = check.take(at, "overlap", where, triggers.as_overlap, self.overlap, default.overlap)
        files = check.take(at, "files", where, triggers.as_globs, self.files, ())
        on_message = check.take(at, "on_message", where, triggers.as_subject, self.on_message, None)
        offset = check.take(at, "offset", where, checks.as_offset, self.offset, 0.0)
        if self.schedule is None:  # an invalid schedule has its own error
            for field in ("timezone", "catchup", "catchup_window", "overlap"):
                if getattr(self, field) is not None:
                    message = f"{field!r}{where} applies to 'schedule', which is not set"
                    check.errors.append(checks.error(at, message))
        if self.offset is not None and not (schedule or files):
            message = f"'offset'{where} applies to 'schedule' or 'files', and neither is set"
            check.errors.append(checks.error(at, message))
        timeout = check.take(at, "timeout", where, checks.as_duration, self.timeout, None)
        max_concurrency = check.take(at, "max_concurrency", where, checks.as_int(1), self.max_concurrency, None)
        max_active_runs = check.take(at, "max_active_runs", where, checks.as_int(1), self.max_active_runs, None)
        upstream = self._edge_upstream(check.errors)
        specs: list[TaskSpec] = []
        nodes: list[checks.Node] = []
        for index, task in enumerate(self._tasks):
            first_at: dict[str, At] = {}
            for dep, dep_at in [*task.upstream, *upstream.get(id(task), [])]:
                first_at.setdefault(dep, dep_at)
            deps = tuple(first_at.items())
            spec = check.task(task, index, retry, deps)
            if spec is not None:
                specs.append(spec)
            if isinstance(task.name, str):
                task_at = task.added_at or task.defined_at
                nodes.append(checks.Node(task.name, task_at, task_at, deps))
        check.errors.extend(checks.graph_errors(nodes))
        checks.raise_sorted(check.errors)
        by_name = {s.name: s for s in specs}
        ordered = tuple(by_name[n] for n in checks.dependency_order(nodes))
        where_added = {t.name: t.added_at or t.defined_at for t in self._tasks}
        check.errors.extend(checks.template_errors(ordered, list(params), lambda task, _: where_added[task]))
        checks.raise_sorted(check.errors)
        key = workflow_key(str(name))
        spec = WorkflowSpec(
            name=key,
            title=str(name) if name != key else "",
            tasks=ordered,
            description=description,
            params=dict(params),
            retry=retry,
            timeout=timeout,
            max_concurrency=max_concurrency,
            max_active_runs=max_active_runs,
            triggers=triggers.workflow_triggers(
                schedule,
                files,
                on_message,
                offset,
                timezone=timezone,
                catchup=catchup,
                catchup_window=window,
                overlap=overlap,
            ),
        )
        ambiguous = triggers.cron_warning(schedule) if schedule else None
        return spec, (checks.warning(at, ambiguous),) if ambiguous else ()

    def _edge_upstream(self, errors: list[DefinitionError]) -> dict[int, list[tuple[str, At]]]:
        """The set_downstream edges as upstream names per task (by identity)."""
        out: dict[int, list[tuple[str, At]]] = {}
        for up, down, at in self._edges:
            if isinstance(down, Task):
                target = next((t for t in self._tasks if t is down), None)
                problem = f"set_downstream: task {down.name!r} is not in workflow {self.name!r}: wf.add it first"
            else:
                target = next((t for t in self._tasks if t.name == down), None)
                names = [t.name for t in self._tasks if isinstance(t.name, str)]
                hint = checks.did_you_mean(str(down), names)
                problem = f"set_downstream: workflow {self.name!r} has no task {down!r}{hint}"
            if target is None:
                errors.append(checks.error(at, problem))
            else:
                out.setdefault(id(target), []).append((up.name if isinstance(up, Task) else up, at))
        return out


class _Checker:
    """Collects errors while converting the builder's values with the shared checks."""

    def __init__(self) -> None:
        self.errors: list[DefinitionError] = []

    def take(self, at: At, field: str, where: str, convert: Callable[[Any], T], value: Any, default: D) -> T | D:
        if value is None:
            return default
        try:
            return convert(value)
        except Invalid as exc:
            self.errors.append(checks.error(at, exc.message(field, where)))
            return default

    def required(self, at: At, field: str, where: str, convert: Callable[[Any], T], value: Any) -> T | None:
        try:
            return convert(value)
        except Invalid as exc:
            self.errors.append(checks.error(at, exc.message(field, where)))
            return None

    def retry(self, at: At, where: str, inner: str, policy: object, base: RetryPolicy) -> RetryPolicy:
        """`policy` with each field checked (durations may be strings); `base` when it is None."""
        if policy is None:
            return base
        if not isinstance(policy, RetryPolicy):
            self.errors.append(checks.error(at, WrongValue("a RetryPolicy", policy).message("retry", where)))
            return base
        values: dict[str, float] = {}
        for field, convert in checks.RETRY_FIELDS.items():
            value = self.required(at, field, inner, convert, getattr(policy, field))
            if value is not None:
                values[field] = value
        return checks.retry_with(policy, values)

    def task(self, task: Task, index: int, retry: RetryPolicy, deps: tuple[tuple[str, At], ...]) -> TaskSpec | None:
        """The TaskSpec of `task`, or None when it has errors (recorded)."""
        at = task.added_at or task.defined_at
        where = f" in task {task.name!r}" if isinstance(task.name, str) else f" in task #{index + 1}"
        before = len(self.errors)
        name = self.required(at, "name", "", checks.as_task_name, task.name)
        handler = self.required(at, "handler", where, _as_handler, task.handler)
        if task.max_retries is not None and task.retry is not None:
            self.errors.append(checks.error(at, f"'max_retries' and 'retry'{where} both set retries: keep one"))
        max_retries = self.take(at, "max_retries", where, checks.as_int(0), task.max_retries, None)
        inner = f" in the retry of task {task.name!r}"
        task_retry = self.retry(at, where, inner, task.retry, retry) if task.retry is not None else None
        if max_retries is not None:
            task_retry = checks.retry_with(retry, {"max_attempts": max_retries + 1})
        spec = TaskSpec(
            name=str(name),
            handler=str(handler),
            queue=self.required(at, "queue", where, checks.as_token("queue"), task.queue) or "",
            payload=task.payload,
            depends_on=tuple(d for d, _ in deps),
            trigger_rule=self.take(
                at, "trigger_rule", where, checks.as_trigger_rule, task.trigger_rule, TriggerRule.ALL_SUCCESS
            ),
            priority=self.take(at, "priority", where, checks.as_int(0, 9), task.priority, DEFAULT_PRIORITY),
            retry=task_retry,
            timeout=self.take(at, "timeout", where, checks.as_duration, task.timeout, None),
            no_alert=self.take(at, "no_alert", where, checks.as_bool, task.no_alert, False),
            require=self.take(at, "require", where, checks.as_names, task.require, ()),
            template=self.take(at, "template", where, checks.as_str, task.template, None),
            job=self.take(at, "job", where, checks.as_str, task.job, None),
            requires=self.take(at, "requires", where, checks.as_labels, task.requires, {}),
        )
        return spec if len(self.errors) == before else None
