"""Workflows written as flowlord TOML files: a list of `[[Phase]]` tables, read with line and column marks.

A flowlord workflow file is accepted exactly as flowlord writes it, and maps onto the one model so:

- The workflow is named after the file (`etl_daily.toml` is `etl_daily`); a top-level `name` overrides
  that, `description` describes it and `max_active_runs` caps its runs at once. Nothing else may stand
  at the top level.
- Each phase is a task. `task = "topic:job"` names it as written; the topic is its queue and handler,
  the part after the first `:` its job. `dependsOn` names its one parent ("" for none), `retry = N`
  allows N retries, and `template` is the info string rendered at dispatch.
- `rule` is query-string-like: `key=value` parts joined by `&`, keys in any case. `cron` (seconds
  first, as flowlord writes it and as every format reads it, or 5 fields; kept as written) and `files`
  make the phase a trigger that starts runs
  at it; `offset` shifts their logical time; `for`, `by`, `meta` and `meta-file` batch them.
  `require:{meta:file}` skips the task unless the key renders non-empty, `retry_delay` sets the
  first retry's delay, `no_alert` silences alerts and `job` sets the job.

TOML parsers give no positions for values, so this module finds them in the text: a key's line
and column, a value's first character, and inside a one-line rule string the part at fault.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jetdag.engine.definitions import checks, triggers
from jetdag.engine.definitions.checks import At, BadValue, Invalid, Located, WrongValue
from jetdag.engine.errors import DefinitionError, DefinitionErrors
from jetdag.engine.model import Batch, BatchBy, RetryPolicy, TaskSpec, Trigger, WorkflowSpec
from jetdag.engine.subjects import workflow_key

T = TypeVar("T")

_TOP = ("name", "description", "max_active_runs", "Phase")
_PHASE = ("task", "dependsOn", "rule", "retry", "template")
_RULE = ("cron", "offset", "files", "require", "retry_delay", "no_alert", "for", "by", "meta", "meta-file", "job")
_STARTERS = ("cron", "files")
"""Rule keys that make a phase start runs by itself."""
_NEEDS_STARTER = ("offset", "for", "by", "meta", "meta-file")
_NO_PHASES = "no [[Phase]] tables: a flowlord workflow lists its tasks as [[Phase]] entries"

_BARE_OR_QUOTED = r"""(?:"[^"\n]*"|'[^'\n]*'|[A-Za-z0-9_-]+)"""
_TABLE = re.compile(rf"""^\s*(\[\[?)\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*\]\]?\s*(?:#.*)?$""")
_KEY = re.compile(rf"""^\s*({_BARE_OR_QUOTED})\s*(?:\.\s*{_BARE_OR_QUOTED}\s*)*=\s*""")
_FIRST_KEY = re.compile(rf"""{_BARE_OR_QUOTED}""")
_DECODE_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")
_META_NAME = re.compile(r"\w+")


def load_toml(path: str | Path, text: str | None = None) -> WorkflowSpec:
    """The workflow in a flowlord TOML file (or in `text`, reported as `path`); DefinitionErrors lists every fault."""
    return read_toml(path, text)[0]


def read_toml(path: str | Path, text: str | None = None) -> Located:
    """Like load_toml, and also where the workflow is named (its `name` value, else the first phase's task). A
    flowlord file has no warnings: its 6-field crons have always had the seconds first."""
    shown = str(path)
    if text is None:
        text = checks.read_text(Path(path), shown)
    text = text.removeprefix("\ufeff")  # a byte order mark, which editors hide and tomllib rejects
    data = _parse(shown, text)
    reader = _Reader(shown, text)
    result = reader.workflow(data, Path(path).stem)
    checks.raise_sorted(reader.errors)
    assert result is not None  # no errors means the reader built a spec
    return result


def _parse(shown: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _DECODE_POSITION.search(message)
        line, column = 1, 1
        if found and found.group(1):
            line, column = int(found.group(1)), int(found.group(2))
        elif found:  # at end of document: where tomllib would put it
            line, column = text.count("\n") + 1, len(text) - text.rfind("\n")
        detail = message[: found.start()] if found else message
        if detail == "Cannot overwrite a value":
            repeat = _repeated_key(shown, text, line)
            if repeat is not None:
                raise DefinitionErrors([repeat]) from None
        raise DefinitionErrors([DefinitionError(shown, line, column, f"invalid TOML: {detail}")]) from None


def _repeated_key(shown: str, text: str, line: int) -> DefinitionError | None:
    """`key = …` on `line` set earlier in its table, pointed at with the line of the first; None when it is not."""
    lines = text.split("\n")
    found = _KEY.match(lines[line - 1])
    if not found:
        return None
    key = _key_path(found.group(0))
    for number in range(line - 1, 0, -1):
        if _TABLE.match(lines[number - 1]):
            break
        prior = _KEY.match(lines[number - 1])
        if prior and _key_path(prior.group(0)) == key:
            message = f"invalid TOML: key {'.'.join(key)!r} is set twice (first at line {number})"
            return DefinitionError(shown, line, found.start(1) + 1, message)
    return None


def _key_path(assignment: str) -> tuple[str, ...]:
    """The key of `a."b" = ` as ('a', 'b')."""
    return tuple(_unquote(k) for k in _FIRST_KEY.findall(assignment))


def _unquote(key: str) -> str:
    return key[1:-1] if key[:1] in "\"'" else key


@dataclass
class _Marks:
    """Where a table and its keys and values are written; what is not found falls back to the table."""

    at: At
    keys: dict[str, At] = field(default_factory=dict)
    values: dict[str, At] = field(default_factory=dict)
    rest: dict[str, str] = field(default_factory=dict)
    """Each key's line from its value's first character on."""

    def key(self, name: str) -> At:
        return self.keys.get(name, self.at)

    def value(self, name: str) -> At:
        return self.values.get(name, self.key(name))

    def inside(self, name: str, string: str, offset: int) -> At:
        """Where character `offset` of the string value `string` of `name` is written; the value's start
        when the string is not written as is on one line (escapes, multi-line strings)."""
        at, rest = self.value(name), self.rest.get(name, "")
        quote, end = rest[:1], 1 + len(string)
        if quote in ("'", '"') and rest[1:end] == string and rest[end : end + 1] == quote:
            return At(at.path, at.line, at.column + 1 + offset)
        return at


def _scan(path: str, text: str) -> tuple[_Marks, list[_Marks]]:
    """The marks of the top-level table and of each `[[Phase]]` table, in the order they are written."""
    top = _Marks(At(path, 1, 1))
    phases: list[_Marks] = []
    current: _Marks | None = top
    in_string: str | None = None  # the delimiter of a multi-line string being skipped
    for number, line in enumerate(text.split("\n"), 1):
        if in_string is not None:
            if line.count(in_string) % 2:
                in_string = None
            continue
        table = _TABLE.match(line)
        if table:
            at = At(path, number, table.start(1) + 1)
            keys = [_unquote(k.strip()) for k in _FIRST_KEY.findall(table.group(2))]
            if table.group(1) == "[[" and keys == ["Phase"]:
                current = _Marks(at)
                phases.append(current)
            elif keys[0] == "Phase" and len(keys) > 1 and phases:
                phases[-1].keys.setdefault(keys[1], at)  # [Phase.x]: a table x in the last phase
                current = None
            else:
                top.keys.setdefault(keys[0], at)
                current = None
            continue
        found = _KEY.match(line)
        if found and current is not None:
            name = _unquote(found.group(1))
            if name not in current.keys:
                current.keys[name] = At(path, number, found.start(1) + 1)
                current.values[name] = At(path, number, found.end() + 1)
                current.rest[name] = line[found.end() :]
        for delimiter in ('"""', "'''"):
            if line.count(delimiter) % 2:
                in_string = delimiter
                break
    return top, phases


def _text(expected: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise WrongValue(expected, value)
        return value

    return convert


def _flag(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise WrongValue("true or false, or no value", value)


def _by(value: object) -> BatchBy:
    if isinstance(value, str) and value.strip().lower() in BatchBy._value2member_map_:
        return BatchBy(value.strip().lower())
    raise WrongValue("one of " + ", ".join(BatchBy), value)


def _meta(value: object) -> dict[str, tuple[str, ...]]:
    """`name:a,b,c|value:1,2,3`: one list per name, row i of the batch takes item i of each."""
    text = checks.as_str(value)
    out: dict[str, tuple[str, ...]] = {}
    for item in text.split("|"):
        cut = min((i for i in (item.find(":"), item.find("=")) if i >= 0), default=-1)
        if cut < 0:
            raise BadValue(f"{item!r} is not a name and its values: write 'name:a,b,c|other:1,2,3'")
        name = item[:cut].strip()
        if not _META_NAME.fullmatch(name):
            raise BadValue(f"invalid meta name {name!r}: templates read it as {{meta:name}}, use letters, digits, '_'")
        if name in out:
            raise BadValue(f"meta name {name!r} is given twice")
        out[name] = tuple(item[cut + 1 :].split(","))
    if len({len(v) for v in out.values()}) > 1:
        sizes = ", ".join(f"{name} has {len(v)}" for name, v in out.items())
        raise BadValue(f"every list needs the same number of values, one per run: {sizes}")
    return out


_RULE_VALUES: dict[str, Callable[[Any], Any]] = {
    "cron": triggers.as_cron,
    "offset": checks.as_offset,
    "files": triggers.as_globs,
    "require": _text("a template key like {meta:file}"),
    "retry_delay": checks.as_duration,
    "no_alert": _flag,
    "for": checks.as_offset,
    "by": _by,
    "meta": _meta,
    "meta-file": _text("a file path"),
    "job": _text("a job name"),
}
"""How each rule key's value is checked; only no_alert may go without one."""


@dataclass
class _Rule:
    """A phase's rule: each key's checked value, and where the key is written."""

    values: dict[str, Any] = field(default_factory=dict)
    at: dict[str, At] = field(default_factory=dict)
    value_at: dict[str, At] = field(default_factory=dict)


class _Reader:
    """Reads one parsed TOML document into a WorkflowSpec, collecting every error on the way."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.errors: list[DefinitionError] = []
        self.top, self.phase_marks = _scan(path, text)
        self.task_marks: dict[str, tuple[_Marks, At | None]] = {}
        """Each task's phase marks, and where its rule's `require` value is written."""

    def fail(self, at: At, message: str) -> None:
        self.errors.append(checks.error(at, message))

    def marks(self, index: int) -> _Marks:
        if index < len(self.phase_marks):
            return self.phase_marks[index]
        return _Marks(self.top.key("Phase"))  # a phase not written as [[Phase]], or not found in the text

    def take(self, table: dict[str, Any], marks: _Marks, key: str, convert: Callable[[Any], T], where: str) -> T | None:
        """The converted value of an optional key; None when absent or invalid."""
        if key not in table:
            return None
        try:
            return convert(table[key])
        except Invalid as exc:
            self.fail(marks.value(key), exc.message(key, where))
            return None

    def workflow(self, data: dict[str, Any], stem: str) -> Located | None:
        for key in data:
            if key not in _TOP:
                self.fail(self.top.key(key), f"unknown field {key!r}{checks.did_you_mean(key, _TOP)}")
        name = self.take(data, self.top, "name", checks.as_workflow_name, "")
        description = self.take(data, self.top, "description", checks.as_str, "") or ""
        max_active_runs = self.take(data, self.top, "max_active_runs", checks.as_int(1), "")
        if "name" not in data:
            try:
                name = checks.as_workflow_name(stem)
            except Invalid as exc:
                self.fail(At(self.path, 1, 1), f"the file name gives no workflow name ({exc}): set a top-level 'name'")
        phases = data.get("Phase")
        if phases is None or phases == []:
            self.fail(At(self.path, 1, 1), _NO_PHASES)
            return None
        if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
            wrong = WrongValue("a list of [[Phase]] tables", phases)
            self.fail(self.top.value("Phase"), wrong.message("Phase", ""))
            return None
        specs: list[TaskSpec] = []
        nodes: list[checks.Node] = []
        found: list[Trigger] = []
        for index, table in enumerate(phases):
            spec, node, trigger = self.phase(table, index)
            specs.extend([spec] if spec else [])
            nodes.extend([node] if node else [])
            found.extend([trigger] if trigger else [])
        self.errors.extend(checks.graph_errors(nodes))
        if self.errors or name is None:
            return None
        by_name = {s.name: s for s in specs}
        tasks = tuple(by_name[n] for n in checks.dependency_order(nodes))
        self.errors.extend(checks.template_errors(tasks, (), self.field_at))
        if self.errors:
            return None
        key = workflow_key(name)
        spec = WorkflowSpec(
            name=key,
            title=name if name != key else "",
            description=description,
            tasks=tasks,
            max_active_runs=max_active_runs,
            triggers=tuple(found),
        )
        named_at = self.top.value("name") if "name" in data else self.marks(0).value("task")
        return Located(spec, named_at, ())

    def field_at(self, task: str, name: str) -> At:
        marks, require_at = self.task_marks[task]
        if name == "require" and require_at is not None:
            return require_at
        return marks.value(name) if name in ("template", "rule") else marks.at

    def phase(self, table: dict[str, Any], index: int) -> tuple[TaskSpec | None, checks.Node | None, Trigger | None]:
        """The phase's task and its trigger if it has one, or None if it has errors; its graph node whenever
        it has a task name, so that duplicates and cycles are reported alongside other errors."""
        marks = self.marks(index)
        raw = table.get("task")
        label = f"phase {raw!r}" if isinstance(raw, str) else f"phase #{index + 1}"
        where = f" in {label}"
        for key in table:
            if key not in _PHASE:
                self.fail(marks.key(key), f"unknown field {key!r}{where}{checks.did_you_mean(key, _PHASE)}")
        if "task" not in table:
            self.fail(marks.at, f"missing required field 'task' in {label}")
        task = self.take(table, marks, "task", checks.as_task_name, "")
        topic, _, job = (task or "").partition(":")
        if task is not None and not topic:
            self.fail(marks.value("task"), f"'task'{where}: the topic before ':' is empty")
        elif task is not None:
            try:
                checks.as_token("queue")(topic)
            except Invalid as exc:
                self.fail(marks.value("task"), exc.message("task", where))
        deps = self.depends_on(table, marks, where)
        retries = self.take(table, marks, "retry", checks.as_int(0), where)
        template = self.take(table, marks, "template", checks.as_str, where)
        text = self.take(table, marks, "rule", checks.as_str, where)
        rule = self.rule(text, marks, where) if text is not None else _Rule()
        starts = any(k in rule.at for k in _STARTERS)
        if starts and deps:
            shown = raw if isinstance(raw, str) else f"#{index + 1}"
            why = "a dependent phase starts when its parent finishes"
            self.fail(marks.key("dependsOn"), f"phase {shown!r} has dependsOn and a cron/files rule: {why}")
        job_rule = rule.values.get("job")
        if job_rule is not None and job and job_rule != job:
            message = f"'job'{where} is {job_rule!r}, but the task name gives the job {job!r}: keep one"
            self.fail(rule.value_at["job"], message)
        if not isinstance(raw, str):
            return None, None, None
        node = checks.Node(raw, marks.at, marks.value("task"), deps)
        self.task_marks.setdefault(raw, (marks, rule.value_at.get("require")))
        if task is None:
            return None, node, None
        retry: dict[str, float] = {}
        if retries is not None:
            retry["max_attempts"] = retries + 1
        if rule.values.get("retry_delay") is not None:
            retry["initial_delay"] = rule.values["retry_delay"]
        require = rule.values.get("require")
        spec = TaskSpec(
            name=task,
            handler=topic,
            queue=topic,
            depends_on=tuple(d for d, _ in deps),
            retry=checks.retry_with(RetryPolicy(), retry) if retry else None,
            no_alert=bool(rule.values.get("no_alert", False)),
            require=(require,) if require is not None else (),
            template=template,
            job=job or job_rule or None,
        )
        return spec, node, self.trigger(task, rule) if starts else None

    def depends_on(self, table: dict[str, Any], marks: _Marks, where: str) -> tuple[tuple[str, At], ...]:
        value = table.get("dependsOn")
        if value is None or value == "":
            return ()
        if not isinstance(value, str):
            wrong = WrongValue('the task of another phase, or "" for none', value)
            self.fail(marks.value("dependsOn"), wrong.message("dependsOn", where))
            return ()
        return ((value, marks.value("dependsOn")),)

    def rule(self, text: str, marks: _Marks, where: str) -> _Rule:
        """The checked parts of a rule: `key=value`, `key:value` or a lone `flag`, joined by `&`."""
        rule = _Rule()
        start = 0
        for part in text.split("&"):
            offset, start = start, start + len(part) + 1
            if not part.strip():
                continue
            key, sep, value = part.partition("=") if "=" in part else part.partition(":")
            name = key.strip().lower()
            key_at = marks.inside("rule", text, offset + len(key) - len(key.lstrip()))
            value_at = marks.inside("rule", text, offset + len(key) + len(sep)) if sep else key_at
            if name not in _RULE:
                hint = checks.did_you_mean(name, _RULE)
                self.fail(key_at, f"unknown rule key {key.strip()!r}{where}{hint}")
                continue
            if name in rule.at:
                first = rule.at[name]
                self.fail(key_at, f"rule key {name!r}{where} is repeated (first at column {first.column})")
                continue
            rule.at[name], rule.value_at[name] = key_at, value_at
            if not sep and name != "no_alert":
                self.fail(key_at, f"{name!r}{where} needs a value: write {name}=...")
                continue
            try:
                rule.values[name] = _RULE_VALUES[name](value if sep else None)
            except Invalid as exc:
                self.fail(value_at, exc.message(name, where))
            # No warning for a 6-field cron here: flowlord has always read the seconds first, so in this
            # format the string never meant anything else (YAML and Python files warn: see triggers.cron_warning).
        if not any(k in rule.at for k in _STARTERS):
            for name in _NEEDS_STARTER:
                if name in rule.at:
                    self.fail(rule.at[name], f"{name!r} needs 'cron' or 'files' in the same rule")
        if "by" in rule.at and "for" not in rule.at:
            self.fail(rule.at["by"], "'by' needs 'for' in the same rule: it steps through the span 'for' gives")
        return rule

    def trigger(self, task: str, rule: _Rule) -> Trigger:
        v = rule.values
        batch = None
        if any(k in rule.at for k in ("for", "by", "meta", "meta-file")):
            batch = Batch(
                span=v.get("for"),
                by=v.get("by") or BatchBy.DAY,
                meta=v.get("meta") or {},
                meta_file=v.get("meta-file"),
            )
        return Trigger(
            cron=v.get("cron"),
            files=v.get("files") or (),
            offset=v.get("offset") or 0.0,
            batch=batch,
            start=(task,),
        )
