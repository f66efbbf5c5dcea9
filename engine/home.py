"""The data dir of `jetdag up`: one owner at a time (a lock), and where other commands find its NATS."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO, Any

import orjson

from jetdag.engine.errors import ConfigError

ENDPOINT = "endpoint.json"
LOCK = "up.lock"


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Take the dir for this process; a second `up` on it fails here instead of corrupting it."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = (self.path / LOCK).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            pid = (self.endpoint() or {}).get("pid", "?")
            raise ConfigError(
                f"another `jetdag up` (pid {pid}) is using {self.path}: stop it first, or pass --data DIR"
            ) from None
        self._lock = handle  # the kernel drops the lock when this process ends, however it ends

    def unlock(self) -> None:
        self.clear_endpoint()
        if self._lock:
            self._lock.close()
            self._lock = None

    def write_endpoint(self, **info: Any) -> None:
        tmp = self.path / (ENDPOINT + ".tmp")
        tmp.write_bytes(orjson.dumps({**info, "pid": os.getpid()}))
        tmp.replace(self.path / ENDPOINT)

    def endpoint(self) -> dict[str, Any] | None:
        try:
            data = orjson.loads((self.path / ENDPOINT).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def clear_endpoint(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / ENDPOINT).unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_nats(flag: str | None, data: Path) -> str:
    """The NATS URL to use: --nats / JETDAG_NATS, else the one the running `jetdag up` wrote into `data`."""
    if flag:
        return flag
    info = DataDir(data).endpoint()
    if info is None:
        raise ConfigError(
            f"no running jetdag found in {data}: start `jetdag up` there, or pass --nats URL (or set JETDAG_NATS)"
        )
    if not _alive(int(info.get("pid", 0))):
        raise ConfigError(f"the `jetdag up` that wrote {data / ENDPOINT} (pid {info.get('pid')}) is not running")
    return str(info["nats"])
