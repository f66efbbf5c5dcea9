"""A WorkflowSpec written back as definition source: a YAML file or a Python module.

The dashboard and `jetdag` show a workflow's definition with these, whatever format it was loaded
from, and the tests use them to prove the formats agree: loading what `to_yaml` or `to_python`
writes gives back an equal spec. Only fields that differ from their defaults are written, so the
output reads like what a person would have written.

Both formats say what they can: one schedule, one set of file globs and one message subject,
sharing one offset. A spec with more (batching, start tasks, two schedules…) raises ValueError.
"""

from __future__ import annotations

import io
import math
import pprint
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from jetdag.engine.durations import format_duration, parse_duration
from jetdag.engine.model import Catchup, Overlap, RetryPolicy, TaskSpec, Trigger, TriggerRule, WorkflowSpec
from jetdag.engine.subjects import DEFAULT_PRIORITY, workflow_key

__all__ = ["to_python", "to_yaml"]

_FLOW_WIDTH = 60
"""Payloads and params whose repr is at most this long are written on one line: `{argv: [echo, hi]}`."""
_LINE = 120


@dataclass(frozen=True, slots=True)
class _Triggers:
    """A spec's triggers as the top-level fields of YAML and the Python builder."""

    schedule: str | None = None
    timezone: str | None = None
    catchup: Catchup = Catchup.NONE
    catchup_window: float | None = None
    """None: the default window."""
    overlap: Overlap = Overlap.ALLOW
    files: tuple[str, ...] = ()
    on_message: str | None = None
    offset: float = 0.0


def _triggers(spec: WorkflowSpec, fmt: str) -> _Triggers:
    """The triggers as top-level fields, or ValueError naming what `fmt` cannot express."""

    def cannot(what: str) -> ValueError:
        return ValueError(f"workflow {spec.name!r}: {fmt} cannot express {what}; keep it in TOML")

    if spec.title and workflow_key(spec.title) != spec.name:
        key = workflow_key(spec.title)
        raise ValueError(f"workflow {spec.name!r}: its title {spec.title!r} would give it the id {key!r} instead")
    out = _Triggers()
    kinds: list[str] = []
    for trigger in spec.triggers:
        if trigger.batch is not None:
            raise cannot("batching")
        if trigger.start:
            raise cannot("a trigger that starts at given tasks (start=...)")
        kind = [
            k for k, on in (("schedule", trigger.cron), ("files", trigger.files), ("on_message", trigger.subject)) if on
        ]
        if len(kind) != 1:
            raise cannot("a trigger with " + (" and ".join(kind) if kind else "neither schedule, files nor on_message"))
        if kind[0] in kinds:
            raise cannot(f"more than one {kind[0]} trigger")
        if kind[0] != "schedule" and _clock(trigger) != _clock(_DEFAULT):
            raise cannot(f"a timezone, catchup, catchup_window or overlap on a {kind[0]} trigger")
        if kinds and trigger.offset != out.offset:
            raise cannot("triggers with different offsets")
        kinds.append(kind[0])
        out = replace(
            out,
            schedule=trigger.cron or out.schedule,
            timezone=trigger.timezone if trigger.cron else out.timezone,
            catchup=trigger.catchup if trigger.cron else out.catchup,
            catchup_window=_window(trigger) if trigger.cron else out.catchup_window,
            overlap=trigger.overlap if trigger.cron else out.overlap,
            files=trigger.files or out.files,
            on_message=trigger.subject or out.on_message,
            offset=trigger.offset,
        )
    if kinds != sorted(kinds, key=["schedule", "files", "on_message"].index):
        raise cannot("triggers in another order than schedule, files, on_message")
    if out.offset and not (out.schedule or out.files):
        raise cannot("an offset on an on_message trigger alone")
    return out


_DEFAULT = Trigger()


def _clock(trigger: Trigger) -> tuple[object, ...]:
    """The fields only a schedule uses: YAML and the builder write them beside `schedule` alone."""
    return trigger.timezone, trigger.catchup, trigger.catchup_window, trigger.overlap


def _window(trigger: Trigger) -> float | None:
    return None if trigger.catchup_window == _DEFAULT.catchup_window else trigger.catchup_window


def _number(value: float) -> int | float:
    """`value` as an int when it is whole (`2` rather than `2.0`); readers turn it back to float."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _duration(seconds: float) -> str | int | float:
    """`10s`, `1h30m`… when that reads back exactly; else the number of seconds."""
    if seconds == 0 or not math.isfinite(seconds):
        return _number(seconds)
    text = format_duration(seconds)
    try:
        if parse_duration(text) == seconds:
            return text
    except ValueError:
        pass
    return _number(seconds)


def _offset(seconds: float) -> str | int | float:
    """A signed duration: `-4h`; a negative number of seconds is written `-14400.5s`."""
    if seconds >= 0 or not math.isfinite(seconds):
        return _duration(seconds)
    magnitude = _duration(-seconds)
    if isinstance(magnitude, str):
        return f"-{magnitude}"
    return f"-{format(Decimal(repr(-seconds)), 'f')}s"  # positional digits: parse_duration has no exponents


def _retry_fields(policy: RetryPolicy, base: RetryPolicy) -> dict[str, Any]:
    """The fields of `policy` that differ from `base`, durations as durations."""
    out: dict[str, Any] = {}
    for f in fields(RetryPolicy):
        value = getattr(policy, f.name)
        if value != getattr(base, f.name):
            if f.name in ("initial_delay", "max_delay"):
                out[f.name] = _duration(value)
            elif f.name == "max_attempts":
                out[f.name] = value
            else:
                out[f.name] = _number(value)
    return out


def _max_retries(task: TaskSpec, workflow: RetryPolicy) -> int | None:
    """`max_retries` for a task policy that is the workflow's with only max_attempts changed."""
    if task.retry is None or replace(workflow, max_attempts=task.retry.max_attempts) != task.retry:
        return None
    return task.retry.max_attempts - 1


# YAML


def to_yaml(spec: WorkflowSpec) -> str:
    """The workflow as a YAML definition that load_yaml reads back into an equal spec."""
    triggers = _triggers(spec, "YAML")
    doc = CommentedMap()
    doc["name"] = _text(spec.title or spec.name)
    if spec.description:
        doc["description"] = _text(spec.description)
    if triggers.schedule:
        doc["schedule"] = _text(triggers.schedule)
        if triggers.timezone is not None:
            doc["timezone"] = _text(triggers.timezone)
        if triggers.catchup != Catchup.NONE:
            doc["catchup"] = triggers.catchup.value
        if triggers.catchup_window is not None:
            doc["catchup_window"] = _duration(triggers.catchup_window)
        if triggers.overlap != Overlap.ALLOW:
            doc["overlap"] = triggers.overlap.value
    if triggers.files:
        doc["files"] = _text(triggers.files[0]) if len(triggers.files) == 1 else _flow_list(triggers.files)
    if triggers.on_message:
        doc["on_message"] = _text(triggers.on_message)
    if triggers.offset:
        doc["offset"] = _offset(triggers.offset)
    if spec.params:
        doc["params"] = _yaml_value(spec.params, "params", flow=False)
    config = CommentedMap()
    if spec.max_concurrency is not None:
        config["max_concurrency"] = spec.max_concurrency
    if spec.max_active_runs is not None:
        config["max_active_runs"] = spec.max_active_runs
    if spec.timeout is not None:
        config["timeout"] = _duration(spec.timeout)
    retry = _retry_fields(spec.retry, RetryPolicy())
    if retry:
        config["retry_policy"] = CommentedMap(retry)
    if config:
        doc["config"] = config
    doc["tasks"] = CommentedSeq(_yaml_task(task, spec.retry) for task in spec.tasks)
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # long strings stay on their line instead of being folded
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _yaml_task(task: TaskSpec, workflow_retry: RetryPolicy) -> CommentedMap:
    m = CommentedMap()
    m["name"] = _text(task.name)
    m["handler"] = _text(task.handler)
    if task.queue != "default":
        m["queue"] = _text(task.queue)
    if task.job is not None:
        m["job"] = _text(task.job)
    if task.depends_on:
        m["depends_on"] = _text(task.depends_on[0]) if len(task.depends_on) == 1 else _flow_list(task.depends_on)
    if task.trigger_rule != TriggerRule.ALL_SUCCESS:
        m["trigger_rule"] = task.trigger_rule.value
    if task.priority != DEFAULT_PRIORITY:
        m["priority"] = task.priority
    if task.retry is not None:
        max_retries = _max_retries(task, workflow_retry)
        if max_retries is not None:
            m["max_retries"] = max_retries
        else:
            m["retry_policy"] = CommentedMap(_retry_fields(task.retry, workflow_retry))
    if task.timeout is not None:
        m["timeout"] = _duration(task.timeout)
    if task.no_alert:
        m["no_alert"] = True
    if task.require:
        m["require"] = _text(task.require[0]) if len(task.require) == 1 else _flow_list(task.require)
    if task.requires:
        m["requires"] = _yaml_value(dict(task.requires), f"the requires of task {task.name!r}", flow=True)
    if task.template is not None:
        m["template"] = _text(task.template)
    if task.payload is not None:
        m["payload"] = _yaml_value(task.payload, f"the payload of task {task.name!r}", flow=True)
    return m


_LINE_BREAKS = frozenset("\n\r\x85\u2028\u2029")


def _text(value: str) -> str:
    """`value`, double-quoted when it holds a line break: ruamel's plain and single-quoted styles
    fold or lose some (`\x85` comes back as a space), its escapes keep them all."""
    return DoubleQuotedScalarString(value) if _LINE_BREAKS.intersection(value) else value


def _flow_list(items: tuple[str, ...]) -> CommentedSeq:
    seq = CommentedSeq(_text(i) for i in items)
    seq.fa.set_flow_style()
    return seq


def _yaml_value(value: Any, where: str, *, flow: bool) -> Any:
    """A plain value as ruamel nodes; short collections on one line when `flow`."""

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return _text(v)
        if v is None or isinstance(v, bool | int | float):
            return v
        if isinstance(v, Mapping):
            m = CommentedMap()
            for k, x in v.items():
                m[walk(k)] = walk(x)
            return m
        if isinstance(v, list | tuple):
            return CommentedSeq(walk(x) for x in v)
        raise ValueError(f"YAML cannot express {where}: {type(v).__name__} is not a plain value")

    out = walk(value)
    if flow and isinstance(out, CommentedMap | CommentedSeq) and _one_line(value):
        out.fa.set_flow_style()
    return out


def _one_line(value: Any) -> bool:
    text = repr(value)
    return len(text) <= _FLOW_WIDTH and "\\n" not in text


# Python


def to_python(spec: WorkflowSpec) -> str:
    """The workflow as a Python module that builds it with jetdag.engine.workflow; load_file reads it
    back into an equal spec."""
    triggers = _triggers(spec, "the Python builder")
    args: list[tuple[str, Any]] = [("name", spec.title or spec.name)]
    if spec.description:
        args.append(("description", spec.description))
    if triggers.schedule:
        args.append(("schedule", triggers.schedule))
        if triggers.timezone is not None:
            args.append(("timezone", triggers.timezone))
        if triggers.catchup != Catchup.NONE:
            args.append(("catchup", triggers.catchup.value))
        if triggers.catchup_window is not None:
            args.append(("catchup_window", _duration(triggers.catchup_window)))
        if triggers.overlap != Overlap.ALLOW:
            args.append(("overlap", triggers.overlap.value))
    if triggers.files:
        args.append(("files", triggers.files[0] if len(triggers.files) == 1 else list(triggers.files)))
    if triggers.on_message:
        args.append(("on_message", triggers.on_message))
    if triggers.offset:
        args.append(("offset", _offset(triggers.offset)))
    if spec.params:
        args.append(("params", spec.params))
    retry = _retry_fields(spec.retry, RetryPolicy())
    uses_policy = bool(retry)
    if retry:
        args.append(("retry", _Code(_policy_code(spec.retry))))
    if spec.timeout is not None:
        args.append(("timeout", _duration(spec.timeout)))
    if spec.max_concurrency is not None:
        args.append(("max_concurrency", spec.max_concurrency))
    if spec.max_active_runs is not None:
        args.append(("max_active_runs", spec.max_active_runs))
    body = [f"wf = {_call('Workflow', [], args, 0, len('wf = '))}", ""]
    variables = {task.name: f"t{i}" for i, task in enumerate(spec.tasks)}
    for task in spec.tasks:
        variable = variables[task.name]
        keywords, policy = _task_keywords(task, spec.retry)
        uses_policy = uses_policy or policy
        one_line = _call("Task", [task.name], keywords, 0, len(f"{variable} = wf.add()"))
        code = one_line if "\n" not in one_line else _call("Task", [task.name], keywords, 4, 4)
        body.append(_added(variable, code))
    edges = [_edge([variables.get(d, repr(d)) for d in t.depends_on], variables[t.name]) for t in spec.tasks]
    if any(edges):
        body.append("")
        body.extend(e for e in edges if e)
    imports = ["from jetdag.engine.model import RetryPolicy"] if uses_policy else []
    imports.append("from jetdag.engine.workflow import Task, Workflow")
    header = f'"""Workflow {spec.name!r}, as the jetdag Python builder writes it."""'
    return "\n".join([header, "", *imports, "", *body]) + "\n"


class _Code(str):
    """Source text to write as is, not repr'd."""

    __slots__ = ()


def _source(value: Any, column: int) -> str:
    """`value` as a Python expression starting at `column`; a long one over several lines, aligned."""
    if isinstance(value, _Code):
        return str(value)
    text = repr(value)
    if len(text) + column <= _LINE:
        return text
    lines = pprint.pformat(value, width=max(_LINE - column, 40), sort_dicts=False).splitlines()
    return "\n".join([lines[0], *(" " * column + line for line in lines[1:])])


def _call(func: str, positional: list[Any], keywords: list[tuple[str, Any]], indent: int, used: int) -> str:
    """`func(a, k=v)` on one line when it fits after `used` columns, else one argument a line under `indent`."""
    parts = [_source(v, 0) for v in positional] + [f"{k}={_source(v, 0)}" for k, v in keywords]
    line = f"{func}({', '.join(parts)})"
    if "\n" not in line and used + len(line) <= _LINE:
        return line
    column = indent + 4
    parts = [_source(v, column) for v in positional]
    parts += [f"{k}={_source(v, column + len(k) + 1)}" for k, v in keywords]
    return f"{func}(\n" + "".join(f"{' ' * column}{p},\n" for p in parts) + " " * indent + ")"


def _added(variable: str, task: str) -> str:
    """`t0 = wf.add(Task(...))`, wrapped as ruff format would when it is long."""
    head = f"{variable} = wf.add("
    if "\n" not in task and len(head) + len(task) + 1 <= _LINE:
        return f"{head}{task})"
    return f"{head}\n    {task}\n)"


def _policy_code(policy: RetryPolicy) -> str:
    fields_ = _retry_fields(policy, RetryPolicy())
    # The builder accepts duration strings, but RetryPolicy is typed with seconds: keep numbers.
    numbers = {f.name: getattr(policy, f.name) for f in fields(RetryPolicy) if f.name in fields_}
    return "RetryPolicy(" + ", ".join(f"{k}={v!r}" for k, v in numbers.items()) + ")"


def _task_keywords(task: TaskSpec, workflow_retry: RetryPolicy) -> tuple[list[tuple[str, Any]], bool]:
    """The keyword arguments of the task's `Task(...)`, and whether they name RetryPolicy."""
    keywords: list[tuple[str, Any]] = [("handler", task.handler)]
    if task.payload is not None:
        keywords.append(("payload", task.payload))
    if task.queue != "default":
        keywords.append(("queue", task.queue))
    if task.job is not None:
        keywords.append(("job", task.job))
    if task.trigger_rule != TriggerRule.ALL_SUCCESS:
        keywords.append(("trigger_rule", task.trigger_rule.value))
    if task.priority != DEFAULT_PRIORITY:
        keywords.append(("priority", task.priority))
    policy = False
    if task.retry is not None:
        max_retries = _max_retries(task, workflow_retry)
        if max_retries is not None:
            keywords.append(("max_retries", max_retries))
        else:
            # A builder Task's retry is a whole policy, not one based on the workflow's.
            keywords.append(("retry", _Code(_policy_code(task.retry))))
            policy = True
    if task.timeout is not None:
        keywords.append(("timeout", _duration(task.timeout)))
    if task.no_alert:
        keywords.append(("no_alert", True))
    if task.require:
        keywords.append(("require", task.require[0] if len(task.require) == 1 else list(task.require)))
    if task.requires:
        keywords.append(("requires", dict(task.requires)))
    if task.template is not None:
        keywords.append(("template", task.template))
    return keywords, policy


def _edge(parents: list[str], child: str) -> str:
    if not parents:
        return ""
    if len(parents) == 1:
        return f"{parents[0]} >> {child}"
    return f"[{', '.join(parents)}] >> {child}"
