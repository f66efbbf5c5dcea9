"""Templates: the keys a task's payload and `template` (flowlord's info string) are rendered with at dispatch.

Every string in a payload (values only, through dicts and lists; never dict keys) may hold keys:

- `{yyyy}` `{mm}` `{dd}` `{hh}` `{ts}` (`20260123T040506`): the run's logical time, in its own time zone;
- `{meta:key}`: the run's trigger or batch metadata;
- `{param:key}`: the run's params;
- `{result:task.key}`: an upstream task's result, `{result:task.a.b}` for nested keys, `{result:task}` for all of it.

A string that is exactly one key becomes that key's value with its type (an int stays an int); inside a longer
string a value is written as text: None as "", booleans as true/false, lists and dicts as compact JSON.

Escapes: `{{` is a literal `{` and `}}` a literal `}`. Only `{word}` and `{word:name}` (no spaces or braces in the
name) are keys, and never right after `$`, so shell `${HOME}`, awk `{print $1}` and JSON text pass through as they
are. A key-shaped word that is not a known key is an error with a did-you-mean, never silently kept.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jetdag.engine.blobs import BLOB_ABOVE, is_ref
from jetdag.engine.errors import JetdagError
from jetdag.engine.subjects import BLOBS

_TOKEN = re.compile(r"\{\{|\}\}|(?<!\$)\{([A-Za-z_]+)(?::([^\s{}]+))?\}")
_TASK = re.compile(r"[A-Za-z0-9_:-]+")
_PLAIN_FIELD = re.compile(r"[A-Za-z0-9_-]+")
_TIME: dict[str, Callable[[datetime], str]] = {
    "yyyy": lambda t: f"{t.year:04d}",
    "mm": lambda t: f"{t.month:02d}",
    "dd": lambda t: f"{t.day:02d}",
    "hh": lambda t: f"{t.hour:02d}",
    "ts": lambda t: f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}",
}
_PREFIXES = {"meta": "key", "param": "key", "result": "task.key"}
"""Each prefix with the placeholder its usage hint shows."""
_KNOWN = (
    " (known keys: {yyyy} {mm} {dd} {hh} {ts} {meta:...} {param:...} {result:...};"
    " write '{{' and '}}' for literal braces)"
)
_SHOWN_NAMES = 10


class TemplateError(JetdagError):
    """A template cannot be rendered; str() is the message a user sees as the task's error."""


@dataclass(frozen=True, slots=True)
class Key:
    """One template key in a string."""

    text: str
    """As written, e.g. "{result:extract.rows}"."""
    kind: str
    """"time" | "meta" | "param" | "result"."""
    name: str
    """"yyyy"…, the meta or param key, or the upstream task's name."""
    path: tuple[str, ...] = ()
    """The key path into a result; () is the whole result."""
    start: int = 0
    """Offset of the "{" in the string."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a run's keys render from."""

    logical_time: datetime
    """Aware; its wall-clock time in its own zone is what {yyyy}… show."""
    params: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    results: Mapping[str, Any] = field(default_factory=dict)
    """Upstream task name -> its result; a task without a result is absent (a KeyError)."""


@dataclass(frozen=True, slots=True)
class _Problem:
    """A key-shaped text that is no valid key; the message gets where it was written only when that is known."""

    text: str
    head: str
    tail: str

    def message(self, where: str = "") -> str:
        at = f" in {where}" if where else ""
        return f"{self.head} '{self.text}'{at}{self.tail}"


@dataclass(frozen=True, slots=True)
class _Parsed:
    parts: tuple[str | Key, ...]
    """Literal text (escapes undone) and keys, in order; meaningless when there are problems."""
    keys: tuple[Key, ...]
    problems: tuple[_Problem, ...]


def keys(text: str) -> list[Key]:
    """The keys in `text`; raises TemplateError naming the first unknown key (with did-you-mean)."""
    if "{" not in text:
        return []
    parsed = _parse(text)
    if parsed.problems:
        raise TemplateError(parsed.problems[0].message())
    return list(parsed.keys)


def problems(text: str) -> list[str]:
    """Every syntax problem in `text` (unknown keys, nameless keys) as messages; [] when fine. Never raises."""
    if "{" not in text:
        return []
    return [p.message() for p in _parse(text).problems]


def has_keys(value: Any) -> bool:
    """True when rendering could change `value`: some string in it holds a key, an escape or a bad key.

    Escapes count because a string holding `{{` must still be rendered to become `{`; bad keys count so that
    rendering reports them instead of passing them on.
    """
    return any(_TOKEN.search(text) for _, text in strings(value))


def strings(value: Any) -> Iterator[tuple[str, str]]:
    """Every string in `value` with its path for messages: ('argv[1]', text), ('env.DATE', text), or
    ("", text) for a top-level string. Dict keys are not rendered, so they are not yielded."""
    return _walk(value, "")


def check(value: Any, *, params: Collection[str], upstream: Collection[str], where: str) -> list[str]:
    """What can be known wrong before running: bad keys, `{param:k}` for a param the workflow does not declare, and
    `{result:t...}` for a task `t` not in `upstream` (the task's transitive upstream tasks).

    `where` names the value first, then its owner: "payload of task 'load'"; a nested string's path is joined to
    that first word, giving "payload.argv[1] of task 'load'". Returns messages; never raises.
    """
    messages: list[str] = []
    for path, text in strings(value):
        if "{" not in text:
            continue
        at = _at(where, path)
        parsed = _parse(text)
        messages.extend(p.message(at) for p in parsed.problems)
        for key in parsed.keys:
            if key.kind == "param" and key.name not in params:
                messages.append(_undeclared(key, params, at))
            elif key.kind == "result" and key.name not in upstream:
                messages.append(_not_upstream(key, upstream, at))
    return list(dict.fromkeys(messages))


def render(value: Any, scope: Scope) -> Any:
    """`value` with every key in its strings replaced, as a new value; `value` itself is never changed.

    Raises TemplateError saying which key cannot be filled and why.
    """
    if isinstance(value, str):
        return _render_text(value, scope)
    if isinstance(value, dict):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    if isinstance(value, tuple):
        return tuple(render(v, scope) for v in value)
    return value


def present(ref: str, scope: Scope) -> bool:
    """For a task's `require` entries: `ref` is one key, with or without braces ("{meta:file}" or "meta:file").

    True when it renders to something non-empty: not missing, None, "", [] or {}. Raises TemplateError only when
    `ref` is not a valid single key.
    """
    key = _single(ref)
    try:
        value = _value(key, scope)
    except TemplateError:
        return False
    return not (value is None or value == "" or (isinstance(value, dict | list | tuple) and not value))


def as_require(ref: str) -> str:
    """`ref` in its braced form "{meta:file}"; TemplateError if it is not exactly one valid key."""
    return _single(ref).text


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> _Parsed:
    # Cached: the engine renders the same few payload strings for every run of a workflow.
    parts: list[str | Key] = []
    found: list[Key] = []
    bad: list[_Problem] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[pos : match.start()])
        pos = match.end()
        token = match.group()
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        key = _key(token, match.group(1), match.group(2), match.start())
        if isinstance(key, _Problem):
            bad.append(key)
            continue
        if any(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(key)
        found.append(key)
    literal.append(text[pos:])
    if any(literal):
        parts.append("".join(literal))
    return _Parsed(tuple(parts), tuple(found), tuple(bad))


def _key(token: str, word: str, name: str | None, start: int) -> Key | _Problem:
    if name is None:
        if word in _TIME:
            return Key(token, "time", word, start=start)
        if word in _PREFIXES:
            return _Problem(token, "template key", f" needs a name: write '{{{word}:{_PREFIXES[word]}}}'")
        return _unknown(token, word, [*_TIME, *_PREFIXES])
    if word in ("meta", "param"):
        return Key(token, word, name, start=start)
    if word == "result":
        task, dot, rest = name.partition(".")
        path = tuple(rest.split(".")) if dot else ()
        if _TASK.fullmatch(task) and all(path):
            return Key(token, "result", task, path, start)
        return _Problem(token, "template key", " needs a task name and dotted key names: write '{result:task.key}'")
    if word in _TIME:
        return _Problem(token, "template key", f" takes no name: write '{{{word}}}'")
    return _unknown(token, word, list(_PREFIXES))


def _unknown(token: str, word: str, known: list[str]) -> _Problem:
    # Compared in lower case so that '{YYYY}' still finds '{yyyy}'.
    close = difflib.get_close_matches(word.lower(), known, n=1)
    if not close:
        return _Problem(token, "unknown template key", _KNOWN)
    guess = close[0]
    shown = f"{{{guess}:...}}" if guess in _PREFIXES else f"{{{guess}}}"
    return _Problem(token, "unknown template key", f" (did you mean '{shown}'?)")


def _single(ref: str) -> Key:
    if not isinstance(ref, str):
        raise TemplateError(f"expected one template key like 'meta:file', got {ref!r}")
    text = ref.strip()
    parsed = _parse(text if text.startswith("{") else f"{{{text}}}")
    if parsed.problems:
        raise TemplateError(parsed.problems[0].message())
    if len(parsed.parts) != 1 or not isinstance(parsed.parts[0], Key):
        raise TemplateError(f"'{ref}' is not one template key: write one like 'meta:file' or '{{meta:file}}'")
    return parsed.parts[0]


def _render_text(text: str, scope: Scope) -> Any:
    if "{" not in text and "}" not in text:
        return text
    parsed = _parse(text)
    if parsed.problems:
        raise TemplateError(parsed.problems[0].message())
    if len(parsed.parts) == 1 and isinstance(parsed.parts[0], Key):
        # The whole string is one key: the value keeps its type. Copied so the rendered payload never shares
        # lists or dicts with the run's params, meta or results.
        return copy.deepcopy(_value(parsed.parts[0], scope))
    return "".join(part if isinstance(part, str) else _as_text(_value(part, scope), part) for part in parsed.parts)


def _by_reference(key: Key) -> str:
    return (
        f"template key '{key.text}': task '{key.name}''s result is over {BLOB_ABOVE:,} bytes and is stored by "
        f"reference in {BLOBS}: pass it whole, as a value of its own ('{{result:{key.name}}}'), and the handler "
        "gets the value"
    )


def _value(key: Key, scope: Scope) -> Any:
    if key.kind == "time":
        return _TIME[key.name](scope.logical_time)
    if key.kind in ("meta", "param"):
        source = scope.meta if key.kind == "meta" else scope.params
        try:
            return source[key.name]
        except KeyError:
            raise TemplateError(
                f"template key '{key.text}': the run has no {key.kind} '{key.name}'{_has(source)}"
            ) from None
    try:
        value = scope.results[key.name]
    except KeyError:
        raise TemplateError(f"template key '{key.text}': task '{key.name}' has not produced a result") from None
    if key.path and is_ref(value):
        raise TemplateError(_by_reference(key))
    for depth, step in enumerate(key.path):
        missing = f"template key '{key.text}': task '{key.name}' has no result key '{'.'.join(key.path[: depth + 1])}'"
        if not isinstance(value, Mapping):
            owner = f"'{'.'.join(key.path[:depth])}'" if depth else "its result"
            raise TemplateError(f"{missing}: {owner} is {_kind(value)}, not an object")
        if step not in value:
            raise TemplateError(missing)
        value = value[step]
    return value


def _as_text(value: Any, key: Key) -> str:
    if is_ref(value):
        raise TemplateError(_by_reference(key))
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _has(names: Mapping[str, Any]) -> str:
    # Run params and meta are few and set by whoever started the run, so naming them shows the typo at once.
    if not names:
        return " (it has none)"
    shown = sorted(map(str, names))
    more = f", and {len(shown) - _SHOWN_NAMES} more" if len(shown) > _SHOWN_NAMES else ""
    return f" (it has: {', '.join(shown[:_SHOWN_NAMES])}{more})"


def _kind(value: Any) -> str:
    kinds = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _undeclared(key: Key, params: Collection[str], at: str) -> str:
    head = f"template key '{key.text}' in {at}:"
    if not params:
        return f"{head} the workflow declares no params; add '{key.name}' under params"
    close = difflib.get_close_matches(key.name, list(params), n=1)
    hint = f" (did you mean '{{param:{close[0]}}}'?)" if close else ""
    return f"{head} the workflow declares no param '{key.name}'{hint}"


def _not_upstream(key: Key, upstream: Collection[str], at: str) -> str:
    close = difflib.get_close_matches(key.name, list(upstream), n=1)
    hint = f" (did you mean '{{result:{'.'.join((close[0], *key.path))}}}'?)" if close else ""
    return f"template key '{key.text}' in {at}: '{key.name}' is not upstream of this task{hint}"


def _at(where: str, path: str) -> str:
    if not path:
        return where
    if not where:
        return path
    head, space, owner = where.partition(" ")
    joined = f"{head}{path}" if path.startswith("[") else f"{head}.{path}"
    return f"{joined}{space}{owner}"


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for name, item in value.items():
            if isinstance(name, str) and _PLAIN_FIELD.fullmatch(name):
                step = f"{path}.{name}" if path else name
            else:
                step = f"{path}[{name!r}]"
            yield from _walk(item, step)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")
