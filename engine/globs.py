"""File-trigger patterns: which paths match, where to watch, and the time a file's path carries.

Patterns follow Go's `filepath.Match` (flowlord's file rules use it), on '/'-separated absolute paths:

- `*` is any run of characters other than '/', `?` is one character other than '/';
- `[abc]`, `[a-z]`, `[^a-z]` (or `[!a-z]`, as shells write it) is a character class;
- `\\` makes the next character literal, also inside a class;
- everything else is itself, and a pattern matches the WHOLE path.

There is no recursive `**`: `*` never crosses '/', so every match sits at a fixed depth below the pattern's
`root`, which lets a watcher skip deeper files and prune its walk. One deliberate difference from Go: a class
never matches '/' (Go's `[^a]` would), for the same reason.

Nothing here touches the filesystem; the only outside state read is the working directory, as the base of
relative patterns and paths.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

_MAGIC: Final = frozenset("*?[\\")


class _PatternError(ValueError):
    """A malformed pattern; the message says what to write instead."""


@dataclass(frozen=True, slots=True)
class _Part:
    """One '/'-separated component of a pattern."""

    source: str
    """The component as the user wrote it (escapes included), to rebuild the pattern."""
    regex: str
    """The component as a regex fragment that never matches '/'."""
    literal: str | None
    """The name it stands for when it has no wildcard, else None."""


class Glob:
    """A file pattern with Go `filepath.Match` semantics, made absolute and compiled once.

    A relative pattern is taken against `base`, which defaults to the working directory when the Glob is
    built: the engine's working directory is the base of relative `files=` rules. Raises ValueError with
    check_pattern's message when the pattern is malformed.
    """

    __slots__ = ("_parts", "_regex", "pattern")

    def __init__(self, pattern: str, base: Path | None = None) -> None:
        parts = _parse(pattern)
        if not pattern.startswith("/"):
            base_dir = Path.cwd() if base is None else base
            if not base_dir.is_absolute():
                raise ValueError(
                    f"the base of pattern {pattern!r} must be an absolute directory, not {str(base_dir)!r}"
                )
            parts = [_literal_part(name) for name in base_dir.parts[1:]] + parts
        parts = _normalise(parts)
        if not parts:
            raise ValueError(_names_no_file(pattern))
        self._parts: tuple[_Part, ...] = tuple(parts)
        self.pattern: str = "/" + "/".join(p.source for p in parts)
        """The absolute pattern; Glob(g.pattern) == g."""
        self._regex = re.compile("/" + "/".join(p.regex for p in parts))

    def match(self, path: str | Path) -> bool:
        """Whether the absolute `path` matches the whole pattern (`//`, `.` and `..` in it are resolved first)."""
        text = os.fspath(path)
        if not text.startswith("/"):
            raise ValueError(f"Glob.match needs an absolute path, got {text!r}")
        # normpath keeps a leading '//' (POSIX leaves its meaning open); for us it is plain '/'.
        text = "/" + posixpath.normpath(text).lstrip("/")
        return self._regex.fullmatch(text) is not None

    @property
    def root(self) -> Path:
        """The deepest directory holding every possible match: the leading components without a wildcard."""
        names: list[str] = []
        for part in self._parts[:-1]:
            if part.literal is None:
                break
            names.append(part.literal)
        return Path("/", *names)

    @property
    def depth(self) -> int:
        """How many components a match has below `root` (`/folder/*/*/*.txt` → 3); always at least 1."""
        return len(self._parts) - len(self.root.parts) + 1

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)


def check_pattern(pattern: str) -> str | None:
    """None when `pattern` is a valid file pattern, else a message saying what is wrong and what to write."""
    try:
        parts = _parse(pattern)
    except _PatternError as e:
        return str(e)
    if pattern.startswith("/") and not _normalise(parts):
        return _names_no_file(pattern)
    return None


def _names_no_file(pattern: str) -> str:
    return f"pattern {pattern!r} resolves to '/', which is no file: name the files, like /data/*.csv"


def _parse(pattern: str) -> list[_Part]:
    """The components of `pattern`, or _PatternError naming the first problem and its 1-based column."""
    if not pattern.strip():
        raise _PatternError("empty pattern: give the files to watch, like /data/in/*.csv")
    parts: list[_Part] = []
    source: list[str] = []
    regex: list[str] = []
    chars: list[str] = []
    wild = False
    i, n = 0, len(pattern)
    while i < n:
        start, c = i, pattern[i]
        i += 1
        if c == "\\":
            if i == n:
                raise _PatternError(
                    f"trailing '\\' at column {i} escapes nothing: write '\\\\' for a literal backslash"
                )
            c = pattern[i]
            i += 1
        elif c == "*":
            if pattern.startswith("*", i):
                raise _PatternError(
                    "'**' is not supported: patterns follow Go's filepath.Match, where '*' never crosses '/';"
                    " write one '*' per directory level, like /data/*/*/*.csv"
                )
            source.append(c)
            regex.append("[^/]*")
            wild = True
            continue
        elif c == "?":
            source.append(c)
            regex.append("[^/]")
            wild = True
            continue
        elif c == "[":
            cls, i = _parse_class(pattern, start)
            source.append(pattern[start:i])
            regex.append(cls)
            wild = True
            continue
        if c == "/":
            parts.append(_Part("".join(source), "".join(regex), None if wild else "".join(chars)))
            source, regex, chars, wild = [], [], [], False
        else:
            source.append(pattern[start:i])
            regex.append(re.escape(c))
            chars.append(c)
    parts.append(_Part("".join(source), "".join(regex), None if wild else "".join(chars)))
    return parts


def _parse_class(pattern: str, start: int) -> tuple[str, int]:
    """The regex for the class opening at `start`, and the index just past its ']'."""
    n = len(pattern)
    i = start + 1
    negated = i < n and pattern[i] in "^!"
    if negated:
        i += 1
    items: list[str] = []

    def unclosed() -> _PatternError:
        return _PatternError(
            f"unclosed '[' at column {start + 1}: a character class needs a closing ']'; write '\\[' for a literal '['"
        )

    def char() -> str:
        """The next character of a class, escapes resolved; refuses the ones that need escaping."""
        nonlocal i
        if i >= n or (pattern[i] == "\\" and i + 1 >= n):
            raise unclosed()
        if pattern[i] == "\\":
            i += 2
            c = pattern[i - 1]
        elif pattern[i] == "-":
            raise _PatternError(
                f"'-' at column {i + 1} must sit between two characters of a class, as in [a-z];"
                " write '\\-' for a literal '-'"
            )
        else:
            c = pattern[i]
            i += 1
        if c == "/":
            raise _PatternError(
                f"the class at column {start + 1} holds '/', which never matches: '/' only separates folders"
            )
        return c

    while True:
        if i >= n:
            raise unclosed()
        if pattern[i] == "]":
            if not items:
                raise _PatternError(
                    f"empty character class at column {start + 1}: write '\\]' for a literal ']' inside a class"
                )
            i += 1
            break
        lo = char()
        if i < n and pattern[i] == "-":
            i += 1
            if i < n and pattern[i] == "]":
                raise _PatternError(
                    f"'-' at column {i} must sit between two characters of a class, as in [a-z];"
                    " write '\\-' for a literal '-'"
                )
            hi = char()
            if hi < lo:
                raise _PatternError(
                    f"range '{lo}-{hi}' in the class at column {start + 1} is backwards: write it low to high, "
                    f"'{hi}-{lo}'"
                )
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
        else:
            items.append(re.escape(lo))
    body = "".join(items)
    # '/' is kept out of every class so that each component of a match is one folder or file name.
    return (f"[^{body}/]" if negated else f"(?!/)[{body}]"), i


def _literal_part(name: str) -> _Part:
    """A component with no wildcard, escaped so the rebuilt pattern still means `name` itself."""
    source = "".join(f"\\{c}" if c in _MAGIC else c for c in name)
    return _Part(source, re.escape(name), name)


def _normalise(parts: list[_Part]) -> list[_Part]:
    """`parts` with empty and '.' components dropped and '..' resolved, as the paths it is matched with are."""
    out: list[_Part] = []
    for part in parts:
        if part.literal in ("", "."):
            continue
        if part.literal == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def file_meta(path: str) -> dict[str, str]:
    """The run metadata of a file trigger: `{meta:file}` (the absolute path) and `{meta:filename}` (its name)."""
    absolute = os.path.abspath(path)
    return {"file": absolute, "filename": posixpath.basename(absolute)}


# Each form of date or time a path may carry, most precise first at any one position; each must start after a
# non-digit and end before one, so 123456789 is no date and the day of 2026/11/22/1300.csv has no hour.
_FORMS: Final = tuple(
    re.compile(f"{form}(?!\\d)")
    for form in (
        r"(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<H>\d{2})",
        r"(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})",
        r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2}))?",
        r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})T(?P<H>\d{2})(?:(?P<M>\d{2})(?P<S>\d{2})?)?",
        r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})",
        r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})T(?P<H>\d{2})(?:(?P<M>\d{2})(?P<S>\d{2})?)?",
        r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})",
    )
)
_DIGIT_RUN: Final = re.compile(r"(?<!\d)\d")
_MIN_YEAR: Final = 1970
_MAX_YEAR: Final = 2200


def path_time(path: str) -> datetime | None:
    """The time `path` carries, as flowlord's tmpl.PathTime reads it, in UTC; None when it carries none.

    Forms: 2026/11/22 folders (then /13 as an hour folder), 2026-11-22, 2026-11-22T13 (with :04, :04:05 or 0405),
    20261122T130000 and 20261122. Only real dates from 1970 to 2200 count. The last date in the path wins, as
    the deepest is the file's own; of the readings of that date the most precise wins, so the hour folder of
    /2026/11/22/13/sales-2026-11-22.csv is kept. Zone suffixes are ignored: every time is read as UTC.
    """
    found: list[tuple[int, datetime]] = []
    pos = 0
    while (run := _DIGIT_RUN.search(path, pos)) is not None:
        pos = run.start() + 1
        for form in _FORMS:
            m = form.match(path, run.start())
            if m is None or (when := _when(m)) is None:
                continue
            found.append((sum(m.groupdict().get(k) is not None for k in "HMS"), when))
            pos = m.end()
            break
    if not found:
        return None
    day = found[-1][1].date()
    # max() keeps the first of equals, so look from the end to let a later reading of the same precision win.
    return max(reversed([f for f in found if f[1].date() == day]), key=lambda f: f[0])[1]


def _when(m: re.Match[str]) -> datetime | None:
    """The UTC time a form's match names, or None when it is no real time in the years we accept."""
    f = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if not _MIN_YEAR <= f["y"] <= _MAX_YEAR:
        return None
    try:
        return datetime(f["y"], f["m"], f["d"], f.get("H", 0), f.get("M", 0), f.get("S", 0), tzinfo=UTC)
    except ValueError:
        return None
