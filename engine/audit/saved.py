"""Saved queries: named SQL shipped with jetdag (queries.toml here) plus the user's DATA/queries.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from jetdag.engine.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SavedQuery:
    name: str
    sql: str
    description: str = ""


def load_saved(user_file: Path | None = None) -> dict[str, SavedQuery]:
    """The shipped queries, then the user's (a name there replaces a shipped one); ConfigError names the fault."""
    shipped = files("jetdag.engine.audit").joinpath("queries.toml").read_text(encoding="utf-8")
    queries = _parse(shipped, "jetdag's queries.toml")
    if user_file is not None and user_file.exists():
        queries.update(_parse(user_file.read_text(encoding="utf-8"), str(user_file)))
    return queries


def _parse(text: str, where: str) -> dict[str, SavedQuery]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    out: dict[str, SavedQuery] = {}
    for name, entry in doc.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: [{name}] must be a table with 'sql' and an optional 'description'")
        unknown = set(entry) - {"sql", "description"}
        if unknown:
            raise ConfigError(f"{where}: [{name}] has unknown key(s) {', '.join(sorted(unknown))}")
        sql, description = entry.get("sql"), entry.get("description", "")
        if not isinstance(sql, str) or not sql.strip():
            raise ConfigError(f"{where}: [{name}] needs 'sql', a string holding one SELECT")
        if not isinstance(description, str):
            raise ConfigError(f"{where}: [{name}].description must be a string")
        out[name] = SavedQuery(name, sql.strip(), description)
    return out
