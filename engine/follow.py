"""Definitions follow their files: `jetdag up --workflows DIR` applies a definition file again when it changes.

flowlord re-reads its workflow files; so does `up`. A file that now has errors is reported (`file:line:
message`) and its workflows keep their last good version; a file removed leaves its workflows registered
(runs and schedules go on) and says so. What changed is applied like `jetdag apply` does it, so a schedule
goes on at its next tick with the new version, and a run keeps the version it started with.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

from jetdag.engine.definitions import validate_files
from jetdag.engine.model import WorkflowSpec

log = logging.getLogger(__name__)

KINDS = (".yaml", ".yml", ".toml", ".py")

Apply = Callable[[WorkflowSpec], Awaitable[tuple[str, int]]]
"""Registers a spec: ("created" | "updated" | "unchanged", its version)."""


def definition_files(directory: Path) -> list[Path]:
    """The definition files of a directory (not its subdirectories), by name."""
    return sorted(p for p in directory.iterdir() if p.suffix in KINDS and not p.name.startswith((".", "__")))


async def follow(directory: Path, apply: Apply, say: Callable[[str], None]) -> None:
    """Until cancelled: apply each definition file of `directory` again when it is written (or a new one
    appears), telling `say` what happened. Errors in one file never stop the others."""
    # rust_timeout: the watching thread returns this often, and a Ctrl-C of `up` waits for it (5 s by default).
    changes_of = watchfiles.awatch(directory, recursive=False, debounce=300, watch_filter=None, rust_timeout=500)
    async for changes in changes_of:
        touched = sorted({Path(path) for _, path in changes if Path(path).suffix in KINDS})
        for path in touched:
            if not path.exists():
                say(f"{path}: removed; its workflows stay registered (their runs and schedules go on)")
                continue
            await reload(path, apply, say)


async def reload(path: Path, apply: Apply, say: Callable[[str], None]) -> None:
    specs, errors, warnings = validate_files([path])
    for warning in warnings:
        say(str(warning))
    for error in errors:
        say(f"{error} (kept the version applied before)")
    for spec in specs:
        try:
            result, version = await apply(spec)
        except Exception as exc:  # NATS trouble or a value too large: say so, keep following
            say(f"{path}: {spec.name}: not applied: {exc}")
            continue
        if result != "unchanged":
            say(f"{path}: {spec.name}: {result} (version {version})")
