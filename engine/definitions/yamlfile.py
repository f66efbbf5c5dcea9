"""Workflows written in YAML (FlowCtl style), read with their line and column marks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from jetdag.engine.definitions import checks, triggers
from jetdag.engine.definitions.checks import At, Invalid, Located, WrongValue
from jetdag.engine.errors import DefinitionError, DefinitionErrors, DefinitionWarning
from jetdag.engine.model import RetryPolicy, TaskSpec, TriggerRule, WorkflowSpec
from jetdag.engine.subjects import DEFAULT_PRIORITY, workflow_key

T = TypeVar("T")
D = TypeVar("D")

_TOP = (
    "name",
    "description",
    "schedule",
    "timezone",
    "catchup",
    "catchup_window",
    "overlap",
    "offset",
    "files",
    "on_message",
    "params",
    "config",
    "tasks",
)
_CONFIG = ("max_concurrency", "max_active_runs", "timeout", "retry_policy")
_SCHEDULE_ONLY = ("timezone", "catchup", "catchup_window", "overlap")
"""Top-level fields that say how the schedule fires: meaningless without one."""
_TASK = (
    "name",
    "queue",
    "type",
    "handler",
    "payload",
    "depends_on",
    "trigger_rule",
    "priority",
    "max_retries",
    "retry_policy",
    "timeout",
    "template",
    "require",
    "requires",
    "no_alert",
    "job",
)
# Aliases can expand a small file into a huge or endless value (billion laughs, `&a [*a]`).
_MAX_VALUES = 100_000
_MAX_DEPTH = 100


def load_yaml(path: str | Path, text: str | None = None) -> WorkflowSpec:
    """The workflow in a YAML file (or in `text`, reported as `path`); DefinitionErrors lists every fault."""
    return read_yaml(path, text)[0]


def read_yaml(path: str | Path, text: str | None = None) -> Located:
    """Like load_yaml, and also where the workflow's name is written and the warnings it deserves."""
    shown = str(path)
    if text is None:
        text = checks.read_text(Path(path), shown)
    reader = _Reader(shown)
    result = reader.workflow(_parse(shown, text))
    checks.raise_sorted(reader.errors)
    assert result is not None  # no errors means the reader built a spec
    return result


def _parse(shown: str, text: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except DuplicateKeyError as exc:
        raise DefinitionErrors(_duplicate_keys(shown, text) or [_yaml_error(shown, text, exc)]) from None
    except YAMLError as exc:
        raise DefinitionErrors([_yaml_error(shown, text, exc)]) from None


def _yaml_error(shown: str, text: str, exc: YAMLError) -> DefinitionError:
    if not isinstance(exc, MarkedYAMLError):
        # A ReaderError (a control character, say) has an offset instead of a mark.
        pos = getattr(exc, "position", None)
        line, column = (
            (text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)) if isinstance(pos, int) else (1, 1)
        )
        return DefinitionError(shown, line, column, f"invalid YAML: {str(exc).splitlines()[0]}")
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem, context = exc.problem or "cannot parse", exc.context or ""
    if context.startswith("while"):
        problem = f"{problem} {context}"
    elif context:
        problem = f"{context}, {problem}"
    return DefinitionError(shown, line, column, f"invalid YAML: {problem}")


def _duplicate_keys(shown: str, text: str) -> list[DefinitionError]:
    """Every repeated key, each pointing at its repeat and naming the first's line.

    ruamel stops at the first repeat and does not say where the original is; the node tree,
    built before any mapping, still holds both.
    """
    out: list[DefinitionError] = []
    pending: list[Node] = [YAML(typ="rt").compose(text)]
    seen: set[int] = set()  # aliases share nodes, and may even loop
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[str, Node] = {}
            for key, value in node.value:
                pending.append(value)
                name = key.value if isinstance(key.value, str) else None
                if name is None:
                    continue
                if name in first:
                    message = f"duplicate key {name!r} (first at line {first[name].start_mark.line + 1})"
                    out.append(DefinitionError(shown, key.start_mark.line + 1, key.start_mark.column + 1, message))
                else:
                    first[name] = key
        elif isinstance(node, SequenceNode):
            pending.extend(node.value)
    return sorted(out, key=lambda e: (e.line, e.column))


def _plain(value: Any) -> Any:
    """`value` as plain dict/list/str/int/float/bool/None, dates as ISO strings."""
    budget = [_MAX_VALUES]

    def walk(v: Any, depth: int = 0) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_DEPTH:
            raise WrongValue(f"a value of at most {_MAX_VALUES} items and {_MAX_DEPTH} levels", value)
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, Mapping):
            return {walk(k, depth + 1): walk(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x, depth + 1) for x in v]
        if isinstance(v, str):
            return str(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, int):
            # ruamel's ScalarBoolean (an anchored `true`) is an int subclass with no bool in its bases
            return bool(v) if type(v).__name__ == "ScalarBoolean" else int(v)
        if isinstance(v, dt.date):
            return v.isoformat()
        tag = getattr(getattr(v, "tag", None), "value", None)
        raise WrongValue("a plain YAML value" + (f" (tag {tag} is not supported)" if tag else ""), v)

    return walk(value)


class _Reader:
    """Reads one parsed YAML document into a WorkflowSpec, collecting every error on the way."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[DefinitionError] = []
        self.warnings: list[DefinitionWarning] = []
        self.task_maps: dict[str, CommentedMap] = {}

    def fail(self, at: At, message: str) -> None:
        self.errors.append(checks.error(at, message))

    def here(self, node: Any) -> At:
        lc = getattr(node, "lc", None)
        if lc is None or lc.line is None:
            return At(self.path, 1, 1)
        return At(self.path, lc.line + 1, lc.col + 1)

    def key_at(self, m: CommentedMap, key: Any) -> At:
        try:
            line, col = m.lc.key(key)
        except (KeyError, TypeError):
            return self.here(m)  # keys brought in by a `<<` merge have no mark of their own
        return At(self.path, line + 1, col + 1)

    def value_at(self, m: CommentedMap, key: Any) -> At:
        try:
            line, col = m.lc.value(key)
        except (KeyError, TypeError):
            return self.key_at(m, key)
        return At(self.path, line + 1, col + 1)

    def item_at(self, seq: CommentedSeq, index: int) -> At:
        try:
            line, col = seq.lc.item(index)
        except (KeyError, TypeError):
            return self.here(seq)
        return At(self.path, line + 1, col + 1)

    def unknown_fields(self, m: CommentedMap, allowed: Sequence[str], where: str) -> None:
        for key in m:
            if key not in allowed:
                hint = checks.did_you_mean(str(key), allowed)
                self.fail(self.key_at(m, key), f"unknown field {str(key)!r}{where}{hint}")

    def take(self, m: CommentedMap, key: str, convert: Callable[[Any], T], where: str, default: D) -> T | D:
        """The converted value of an optional field; `default` when absent, null or invalid."""
        value = m.get(key)
        if value is None:
            return default
        try:
            return convert(_plain(value))
        except Invalid as exc:
            self.fail(self.value_at(m, key), exc.message(key, where))
            return default

    def required(self, m: CommentedMap, key: str, convert: Callable[[Any], T], where: str) -> T | None:
        if key not in m:
            self.fail(self.here(m), f"missing required field {key!r}{where}")
            return None
        try:
            return convert(_plain(m[key]))
        except Invalid as exc:
            self.fail(self.value_at(m, key), exc.message(key, where))
            return None

    def mapping(self, m: CommentedMap, key: str, expected: str, where: str) -> CommentedMap | None:
        value = m.get(key)
        if value is None or isinstance(value, CommentedMap):
            return value
        self.fail(self.value_at(m, key), WrongValue(expected, _plain(value)).message(key, where))
        return None

    def workflow(self, doc: Any) -> Located | None:
        if not isinstance(doc, CommentedMap):
            got = "an empty file" if doc is None else checks.describe(_plain(doc))
            self.fail(self.here(doc), f"a workflow file must be a YAML mapping with 'name' and 'tasks', got {got}")
            return None
        self.unknown_fields(doc, _TOP, "")
        name = self.required(doc, "name", checks.as_workflow_name, "")
        config = self.mapping(doc, "config", "a mapping with " + ", ".join(_CONFIG), "")
        retry, timeout, max_concurrency, max_active_runs = RetryPolicy(), None, None, None
        if config is not None:
            self.unknown_fields(config, _CONFIG, " in config")
            max_concurrency = self.take(config, "max_concurrency", checks.as_int(1), " in config", None)
            max_active_runs = self.take(config, "max_active_runs", checks.as_int(1), " in config", None)
            timeout = self.take(config, "timeout", checks.as_duration, " in config", None)
            retry = self.retry(config, " in config", " in config.retry_policy", RetryPolicy())
        tasks = self.tasks(doc, retry)
        params = self.mapping(doc, "params", "a mapping of parameter names to default values", "")
        description = self.take(doc, "description", checks.as_str, "", "")
        schedule = self.take(doc, "schedule", triggers.as_cron, "", None)
        timezone = self.take(doc, "timezone", triggers.as_timezone, "", None)
        catchup = self.take(doc, "catchup", triggers.as_catchup, "", triggers.DEFAULT.catchup)
        window = self.take(doc, "catchup_window", triggers.as_catchup_window, "", triggers.DEFAULT.catchup_window)
        overlap = self.take(doc, "overlap", triggers.as_overlap, "", triggers.DEFAULT.overlap)
        files = self.take(doc, "files", triggers.as_globs, "", ())
        on_message = self.take(doc, "on_message", triggers.as_subject, "", None)
        offset = self.take(doc, "offset", checks.as_offset, "", 0.0)
        for key in _SCHEDULE_ONLY:
            if key in doc and doc.get("schedule") is None:  # an invalid schedule has its own error
                self.fail(self.key_at(doc, key), f"{key!r} applies to 'schedule', which is not set")
        if "offset" in doc and not (schedule or files):
            self.fail(self.key_at(doc, "offset"), "'offset' applies to 'schedule' or 'files', and neither is set")
        if self.errors or name is None or tasks is None:
            return None
        param_names = [str(k) for k in params] if params is not None else []
        self.errors.extend(checks.template_errors(tasks, param_names, self.field_at))
        if self.errors:
            return None
        key = workflow_key(name)
        spec = WorkflowSpec(
            name=key,
            title=name if name != key else "",
            tasks=tasks,
            description=description,
            params=_plain(params) if params is not None else {},
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
        if ambiguous:
            self.warnings.append(checks.warning(self.value_at(doc, "schedule"), ambiguous))
        return Located(spec, self.value_at(doc, "name"), tuple(self.warnings))

    def field_at(self, task: str, field: str) -> At:
        m = self.task_maps[task]
        return self.value_at(m, field) if field in m else self.here(m)

    def retry(self, m: CommentedMap, where: str, inner: str, base: RetryPolicy) -> RetryPolicy:
        """`base` overridden by the fields of m's retry_policy, if it has one."""
        policy = self.mapping(m, "retry_policy", "a mapping with " + ", ".join(checks.RETRY_FIELDS), where)
        if policy is None:
            return base
        self.unknown_fields(policy, list(checks.RETRY_FIELDS), inner)
        values: dict[str, float] = {}
        for key, convert in checks.RETRY_FIELDS.items():
            value = self.take(policy, key, convert, inner, None)
            if value is not None:
                values[key] = value
        return checks.retry_with(base, values)

    def tasks(self, doc: CommentedMap, retry: RetryPolicy) -> tuple[TaskSpec, ...] | None:
        if "tasks" not in doc:
            self.fail(self.here(doc), "missing required field 'tasks'")
            return None
        items = doc["tasks"]
        if not isinstance(items, CommentedSeq) or not items:
            wrong = WrongValue("a non-empty list of tasks", _plain(items))
            self.fail(self.value_at(doc, "tasks"), wrong.message("tasks", ""))
            return None
        specs: list[TaskSpec] = []
        nodes: list[checks.Node] = []
        for index, item in enumerate(items):
            if not isinstance(item, CommentedMap):
                got = checks.describe(_plain(item))
                at = self.item_at(items, index)
                self.fail(at, f"task #{index + 1} must be a mapping with 'name' and 'handler', got {got}")
                continue
            spec, node = self.task(item, index, retry)
            specs.extend([spec] if spec else [])
            nodes.extend([node] if node else [])
        self.errors.extend(checks.graph_errors(nodes))
        if self.errors:
            return None
        by_name = {s.name: s for s in specs}
        return tuple(by_name[n] for n in checks.dependency_order(nodes))

    def task(self, m: CommentedMap, index: int, retry: RetryPolicy) -> tuple[TaskSpec | None, checks.Node | None]:
        """The task, or None if it has errors; its graph node whenever it has a name, so that
        duplicates and cycles are reported alongside other errors."""
        raw_name = m.get("name")
        label = f"task {raw_name!r}" if isinstance(raw_name, str) else f"task #{index + 1}"
        where = f" in {label}"
        self.unknown_fields(m, _TASK, where)
        if "name" in m:
            self.required(m, "name", checks.as_task_name, "")
        else:
            self.fail(self.here(m), f"missing required field 'name' in {label}")
        if "queue" in m and "type" in m:
            self.fail(self.key_at(m, "type"), f"'type' and 'queue'{where} name the same thing: keep one")
        queue_key = "type" if "type" in m and "queue" not in m else "queue"
        queue = self.take(m, queue_key, checks.as_token("queue"), where, "default")
        handler: str | None = queue  # FlowCtl's `type: etl` alone: queue etl, served by the handler etl
        if "handler" in m:
            handler = self.required(m, "handler", checks.as_handler, where)
        elif queue_key not in m:
            self.fail(self.here(m), f"missing 'handler'{where}: name the handler that runs it, or a 'type'")
            handler = None
        if "max_retries" in m and "retry_policy" in m:
            at = self.key_at(m, "retry_policy")
            self.fail(at, f"'max_retries' and 'retry_policy'{where} both set retries: keep one")
        max_retries = self.take(m, "max_retries", checks.as_int(0), where, None)
        task_retry = None
        if max_retries is not None:
            task_retry = checks.retry_with(retry, {"max_attempts": max_retries + 1})
        elif m.get("retry_policy") is not None:
            task_retry = self.retry(m, where, f" in the retry_policy of {label}", retry)
        deps = self.depends_on(m, where)
        payload = self.take(m, "payload", lambda v: v, where, None)
        rule = self.take(m, "trigger_rule", checks.as_trigger_rule, where, TriggerRule.ALL_SUCCESS)
        priority = self.take(m, "priority", checks.as_int(0, 9), where, DEFAULT_PRIORITY)
        timeout = self.take(m, "timeout", checks.as_duration, where, None)
        template = self.take(m, "template", checks.as_str, where, None)
        require = self.take(m, "require", checks.as_names, where, ())
        requires: dict[str, str] = self.take(m, "requires", checks.as_labels, where, {})
        no_alert = self.take(m, "no_alert", checks.as_bool, where, False)
        job = self.take(m, "job", checks.as_str, where, None)
        if not isinstance(raw_name, str):
            return None, None
        node = checks.Node(raw_name, self.here(m), self.value_at(m, "name"), deps)
        self.task_maps.setdefault(raw_name, m)
        if handler is None:
            return None, node
        spec = TaskSpec(
            name=raw_name,
            handler=handler,
            queue=queue,
            payload=payload,
            depends_on=tuple(d for d, _ in deps),
            trigger_rule=rule,
            priority=priority,
            retry=task_retry,
            timeout=timeout,
            no_alert=no_alert,
            require=require,
            template=template,
            job=job,
            requires=requires,
        )
        return spec, node

    def depends_on(self, m: CommentedMap, where: str) -> tuple[tuple[str, At], ...]:
        """Each dependency with where it is written, so an unknown one is pointed at exactly."""
        value = m.get("depends_on")
        if value is None:
            return ()
        if isinstance(value, str):
            return ((str(value), self.value_at(m, "depends_on")),)
        if not isinstance(value, CommentedSeq) or not all(isinstance(v, str) and v for v in value):
            wrong = WrongValue("a task name or a list of task names", _plain(value))
            self.fail(self.value_at(m, "depends_on"), wrong.message("depends_on", where))
            return ()
        seen: dict[str, At] = {}
        for index, dep in enumerate(value):
            seen.setdefault(str(dep), self.item_at(value, index))
        return tuple(seen.items())
