"""Rules every definition format shares: field values, names, and the shape of the task graph.

Each format (YAML, Python) finds the values and where they are written; this module says whether
they are valid and in what words, so that all formats accept the same workflows and explain the
same mistakes the same way.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, NamedTuple

from jetdag.engine import templates
from jetdag.engine.durations import parse_duration
from jetdag.engine.errors import DefinitionError, DefinitionErrors, DefinitionWarning
from jetdag.engine.model import CycleFound, RetryPolicy, TaskSpec, TriggerRule, WorkflowSpec, topological_order
from jetdag.engine.subjects import HANDLER_RULE, LABEL_RULE, is_handler_name, is_token, workflow_key


class At(NamedTuple):
    """Where something is written: file, 1-based line and column."""

    path: str
    line: int
    column: int


def error(at: At, message: str) -> DefinitionError:
    return DefinitionError(at.path, at.line, at.column, message)


def warning(at: At, message: str) -> DefinitionWarning:
    return DefinitionWarning(at.path, at.line, at.column, message)


class Located(NamedTuple):
    """A workflow read from a file: its spec, where it is named, and the warnings it deserves though valid."""

    spec: WorkflowSpec
    at: At
    warnings: tuple[DefinitionWarning, ...] = ()


def raise_sorted(errors: list[DefinitionError]) -> None:
    """Raise `errors` together in file order, or return when there are none."""
    if errors:
        raise DefinitionErrors(sorted(errors, key=lambda e: (e.path, e.line, e.column)))


def read_text(path: Path, shown: str) -> str:
    """The text of a definition file, or DefinitionErrors saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        message = f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        message = f"cannot read: {exc.strerror or exc}"
    raise DefinitionErrors([DefinitionError(shown, 1, 1, message)])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when a choice is close to `word`, else the empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(value: object) -> str:
    """A value as an error message shows what the user wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if callable(value):
        return f"the function {getattr(value, '__name__', type(value).__name__)}"
    return f"a {type(value).__name__}"


class Invalid(ValueError):
    """A value that does not fit its field; `message` words it for the field and its place."""

    def message(self, field: str, where: str) -> str:
        raise NotImplementedError


class WrongValue(Invalid):
    def __init__(self, expected: str, value: object, hint: str = "") -> None:
        self.expected, self.value, self.hint = expected, value, hint
        super().__init__(expected)

    def message(self, field: str, where: str) -> str:
        return f"{field!r}{where} must be {self.expected}, got {describe(self.value)}{self.hint}"


class BadValue(Invalid):
    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)

    def message(self, field: str, where: str) -> str:
        return f"{field!r}{where}: {self.detail}"


class BadName(Invalid):
    def __init__(self, kind: str, value: str, allowed: str = "letters, digits, '_' and '-'") -> None:
        self.kind, self.value, self.allowed = kind, value, allowed
        super().__init__(value)

    def message(self, field: str, where: str) -> str:
        return f"invalid {self.kind} name {self.value!r}{where}: use only {self.allowed}"


def as_str(value: object) -> str:
    if not isinstance(value, str):
        raise WrongValue("a string", value)
    return value


def as_handler(value: object) -> str:
    # The handler is a token of the subject its tasks wait on (`jd.task.<queue>.<prio>.<handler>`).
    if not isinstance(value, str) or not is_handler_name(value):
        raise WrongValue(f"a handler name of {HANDLER_RULE}", value)
    return value


def as_token(kind: str) -> Callable[[object], str]:
    """A converter for names that become NATS subject tokens and KV keys (workflow, task, queue)."""

    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise WrongValue(f"a {kind} name", value)
        if not is_token(value):
            raise BadName(kind, value)
        return value

    return convert


def as_workflow_name(value: object) -> str:
    """A workflow name as written; its id (subjects.workflow_key) must not be empty."""
    if not isinstance(value, str) or not value.strip():
        raise WrongValue("a workflow name", value)
    if len(value) > 200:
        raise BadValue("a workflow name has at most 200 characters")
    if not workflow_key(value):
        raise BadValue(f"workflow name {value!r} needs at least one letter or digit")
    return value.strip()


_TASK_NAME = re.compile(r"^[A-Za-z0-9_:-]+$")


def as_task_name(value: object) -> str:
    """Task names are tokens, with `:` allowed for flowlord's `topic:job`."""
    if not isinstance(value, str):
        raise WrongValue("a task name", value)
    if not _TASK_NAME.match(value):
        raise BadName("task", value, "letters, digits, '_', '-' and ':'")
    return value


def as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise WrongValue("true or false", value)
    return value


def _bounds(kind: str, low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"{kind} from {low:g} to {high:g}"
    return f"{kind} >= {low:g}" if low is not None else kind


def as_int(low: int | None = None, high: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise WrongValue(_bounds("an integer", low, high), value)
        return value

    return convert


def as_number(low: float | None = None, high: float | None = None) -> Callable[[object], float]:
    def convert(value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            raise WrongValue(_bounds("a number", low, high), value)
        return float(value)

    return convert


def as_duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def as_offset(value: object) -> float:
    """A signed duration: `-4h` moves the logical time back four hours."""
    text = value.strip() if isinstance(value, str) else value
    negative = isinstance(text, str) and text.startswith("-")
    try:
        seconds = parse_duration(text[1:] if negative and isinstance(text, str) else text)
    except ValueError as exc:
        raise BadValue(str(exc)) from None
    return -seconds if negative else seconds


def as_labels(value: object) -> dict[str, str]:
    """Worker labels a task `requires` (`{gpu: true}`): names and values become subject tokens."""
    if not isinstance(value, dict) or not value:
        raise WrongValue("a map of labels, like {gpu: true}", value)
    labels: dict[str, str] = {}
    for key, raw in value.items():
        text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
        if not isinstance(key, str) or not is_token(key) or not isinstance(raw, str | int | bool) or not is_token(text):
            raise WrongValue(f"a map of labels whose names and values are {LABEL_RULE} (not {key}: {raw!r})", value)
        labels[key] = text
    return labels


def as_names(value: object) -> tuple[str, ...]:
    """A name or a list of names (depends_on, require), without repeats."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
        raise WrongValue("a name or a list of names", value)
    return tuple(dict.fromkeys(items))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


RULE_ALIASES: Final = {
    **{_camel(rule): rule for rule in TriggerRule},
    "allSuccessful": TriggerRule.ALL_SUCCESS,
}
"""Goflow's spellings of the trigger rules (`allSuccessful`, `allDone`) and the camelCase of every rule, so a
Goflow DAG's rules read unchanged; each means exactly one rule."""


def as_trigger_rule(value: object) -> TriggerRule:
    if isinstance(value, TriggerRule):
        return value
    if isinstance(value, str) and value in TriggerRule._value2member_map_:
        return TriggerRule(value)
    if isinstance(value, str) and value in RULE_ALIASES:
        return RULE_ALIASES[value]
    hint = did_you_mean(value, [r.value for r in TriggerRule]) if isinstance(value, str) else ""
    raise WrongValue("one of " + ", ".join(TriggerRule), value, hint)


RETRY_FIELDS: dict[str, Callable[[object], float]] = {
    "max_attempts": as_int(1),
    "initial_delay": as_duration,
    "max_delay": as_duration,
    "backoff_factor": as_number(1),
    "jitter": as_number(0, 1),
}
"""How each RetryPolicy field is checked, by name."""


def retry_with(base: RetryPolicy, values: Mapping[str, float]) -> RetryPolicy:
    """`base` with the given fields replaced; max_attempts stays an int."""
    fields: dict[str, Any] = dict(values)
    if "max_attempts" in fields:
        fields["max_attempts"] = int(fields["max_attempts"])
    return replace(base, **fields)


@dataclass(frozen=True, slots=True)
class Node:
    """A task as the graph checks see it, with where each part is written."""

    name: str
    at: At
    """The task as a whole: cycles are reported here."""
    name_at: At
    deps: tuple[tuple[str, At], ...]


def graph_errors(nodes: Sequence[Node]) -> list[DefinitionError]:
    """Duplicate names, unknown or self dependencies, and a cycle if there is one."""
    errors: list[DefinitionError] = []
    first: dict[str, Node] = {}
    for node in nodes:
        if node.name not in first:
            first[node.name] = node
            continue
        prev = first[node.name].name_at
        place = f"line {prev.line}" if prev.path == node.name_at.path else f"{prev.path}:{prev.line}"
        errors.append(error(node.name_at, f"duplicate task name {node.name!r} (first defined at {place})"))
    for node in nodes:
        for dep, at in node.deps:
            if dep == node.name:
                errors.append(error(at, f"task {node.name!r} depends on itself"))
            elif dep not in first:
                hint = did_you_mean(dep, [n for n in first if n != node.name])
                errors.append(error(at, f"task {node.name!r} depends on unknown task {dep!r}{hint}"))
    try:
        dependency_order(nodes)
    except CycleFound as found:
        # Start the cycle at the task written first, so the message is the same whatever the
        # search order, and points where a reader begins.
        cycle = found.cycle[:-1]
        position = {name: i for i, name in enumerate(first)}
        start = min(range(len(cycle)), key=lambda i: position[cycle[i]])
        cycle = cycle[start:] + cycle[:start]
        errors.append(error(first[cycle[0]].at, "cycle: " + " -> ".join([*cycle, cycle[0]])))
    return errors


def dependency_order(nodes: Sequence[Node]) -> list[str]:
    """Task names in dependency order, keeping the written order where it already fits."""
    graph: dict[str, tuple[str, ...]] = {}
    for node in nodes:
        graph.setdefault(node.name, tuple(d for d, _ in node.deps if d != node.name))
    return topological_order(graph)


def template_errors(
    tasks: Sequence[TaskSpec], params: Collection[str], at: Callable[[str, str], At]
) -> list[DefinitionError]:
    """Template keys that can be known wrong before running: syntax, undeclared params, results of
    tasks that are not upstream, and `require` entries that are not one key.

    `at(task, field)` says where a task's field ('payload', 'template', 'require') is written.
    Call it once the graph is known to be sound: upstream sets follow depends_on.
    """
    errors: list[DefinitionError] = []
    upstream: dict[str, set[str]] = {}
    for task in tasks:  # dependency order: parents come first
        above = upstream.setdefault(task.name, set())
        for parent in task.depends_on:
            above.add(parent)
            above.update(upstream.get(parent, ()))
    for task in tasks:
        label = f"task {task.name!r}"
        for field, value in (("payload", task.payload), ("template", task.template)):
            if value is not None:
                for message in templates.check(
                    value, params=params, upstream=upstream[task.name], where=f"{field} of {label}"
                ):
                    errors.append(error(at(task.name, field), message))
        for ref in task.require:
            try:
                templates.as_require(ref)
            except templates.TemplateError as exc:
                errors.append(error(at(task.name, "require"), f"'require' in {label}: {exc}"))
    return errors
