"""Settings: flags > JETDAG_* environment variables > jetdag.toml, with errors that name the source."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from jetdag.engine.errors import ConfigError

CONFIG_FILE = "jetdag.toml"


def env_var(option: str) -> str:
    """`--some-name` -> `JETDAG_SOME_NAME`."""
    return "JETDAG_" + option.lstrip("-").replace("-", "_").upper()


def load_defaults(path: Path, known: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    """click's default_map from jetdag.toml: top-level keys apply to every command, `[verb]` tables to one.

    `known` maps each command to its option names; an unknown key is an error naming the file and key.
    """
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    everything = set().union(*known.values())
    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for key in shared:
        _check(path, key, everything)
    out: dict[str, dict[str, Any]] = {}
    for command, names in known.items():
        section = data.get(command, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [{command}] must be a table")
        for key in section:
            _check(path, f"{command}.{key}", names, key)
        out[command] = {
            k.replace("-", "_"): v for k, v in {**shared, **section}.items() if k.replace("-", "_") in names
        }
    for key, value in data.items():
        if isinstance(value, dict) and key not in known:
            raise ConfigError(f"{path}: unknown section [{key}]; sections are {', '.join(sorted(known))}")
    return out


def _check(path: Path, shown: str, names: set[str], key: str | None = None) -> None:
    key = (key or shown).replace("-", "_")
    if key not in names:
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0].replace('_', '-')!r}?)" if close else ""
        raise ConfigError(f"{path}: unknown setting {shown!r}{hint}")
