"""Hot reload of handler modules, by fib-flow's rules.

`jetdag worker --import mod --reload` (or a SIGHUP) imports each module again. Attempts already running keep
the function they started with (the worker holds it); new attempts look the handler up again and get the
new one. A handler the module no longer defines is no longer served: its tasks wait for a worker that
still has it. A module that fails to import again keeps its old handlers, and the error is reported.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import watchfiles

from jetdag.engine.handlers import handlers_of, restore, snapshot, unuse


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What reloading one module did."""

    module: str
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    error: str | None = None

    def __str__(self) -> str:
        if self.error is not None:
            return f"{self.module}: not reloaded, its handlers are unchanged: {self.error}"
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("added", self.added), ("changed", self.changed), ("removed", self.removed)) if names]  # fmt: skip
        return f"{self.module}: reloaded" + (f" ({'; '.join(parts)})" if parts else ", nothing changed")


def reload_modules(names: Iterable[str]) -> list[Reloaded]:
    """Import each module again; what it added, changed and removed of the registered handlers."""
    return [_reload(name) for name in names]


def _reload(name: str) -> Reloaded:
    before, saved = handlers_of(name), snapshot()
    try:
        module = sys.modules.get(name)
        if module is None:
            importlib.import_module(name)
        else:
            # Python trusts a .pyc whose source has the same size and mtime (in seconds): an edit made within
            # the second of the last import would be missed.
            with contextlib.suppress(OSError, TypeError):
                os.remove(module.__cached__)
            importlib.reload(module)
    except Exception as exc:
        restore(saved)  # it may have registered some of its new handlers before it failed
        return Reloaded(name, error=f"{type(exc).__name__}: {exc}")
    after = handlers_of(name)
    # A handler the new code did not register again is still the old function: the module dropped it.
    removed = tuple(sorted(n for n, fn in before.items() if after.get(n) is fn))
    for n in removed:
        unuse(n)
    added = tuple(sorted(set(after) - set(before)))
    changed = tuple(sorted(n for n in set(after) & set(before) if _code(after[n]) != _code(before[n])))
    return Reloaded(name, added, changed, removed)


def _code(fn: object) -> object:
    code = getattr(fn, "__code__", None)
    return (code.co_code, code.co_consts) if code is not None else fn


async def watch_modules(names: Iterable[str], changed: Callable[[], None]) -> None:
    """Until cancelled: call `changed` when the source file of one of the modules is written."""
    files = _files_of(names)
    if not files:
        return
    folders = sorted({os.path.dirname(f) for f in files})
    # rust_timeout: the watching thread returns this often, and a Ctrl-C waits for it (5 s by default).
    async for _ in watchfiles.awatch(
        *folders, watch_filter=lambda _, path: os.path.realpath(path) in files, debounce=300, rust_timeout=500
    ):
        changed()


def _files_of(names: Iterable[str]) -> set[str]:
    return {os.path.realpath(f) for n in names if (f := getattr(sys.modules.get(n), "__file__", None))}
