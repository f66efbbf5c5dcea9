"""A `jetdag up` subprocess for end-to-end tests: start it, run verbs against it, stop it, check its children."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers import eventually_sync

JETDAG = str(Path(sys.executable).with_name("jetdag"))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's JETDAG_* settings, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("JETDAG_")}, **extra}


def jetdag(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JETDAG, *args], cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Up:
    """A running `jetdag up` and where to find it."""

    proc: subprocess.Popen[bytes]
    root: Path
    data: Path
    nats: str = ""
    http: str = ""

    def log(self) -> str:
        return (self.root / "up.log").read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`jetdag <args> --data <this up's data dir>`, run in its root dir."""
        return jetdag(*args, "--data", str(self.data), cwd=self.root, timeout=timeout)

    def json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return orjson.loads(done.stdout)


def endpoint(data: Path) -> dict[str, Any] | None:
    try:
        info = orjson.loads((data / "endpoint.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def healthy(http: str) -> bool:
    try:
        return httpx.get(f"{http}api/v1/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_up(root: Path, examples: bool = False, *extra: str) -> Up:
    """`jetdag up` on `root`/data with a free HTTP port, once its endpoint is written and health answers 200."""
    data = root / "data"
    with (root / "up.log").open("ab") as log:
        proc = subprocess.Popen(
            [JETDAG, "up", "--data", str(data), "--http", "127.0.0.1:0", *([] if examples else ["--no-examples"]),
             *extra],
            cwd=root, env=clean_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    up = Up(proc, root, data)

    def ready() -> dict[str, Any] | None:
        if proc.poll() is not None:
            pytest.fail(f"jetdag up exited with {proc.returncode}:\n{up.log()}")
        info = endpoint(data)
        if info is None or info.get("pid") != proc.pid:
            return None
        return info if healthy(info["http"]) else None

    try:
        info = eventually_sync(ready, timeout=20, interval=0.05)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    assert info is not None
    up.nats, up.http = info["nats"], info["http"]
    return up


def children(pid: int) -> set[int]:
    kids: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            kids.update(int(k) for k in path.read_text().split())
    return kids


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def exited(pid: int) -> bool:
    """True once /proc/<pid> is gone, or left as a zombie that an orphan's new parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def nats_servers(up: Up) -> set[int]:
    servers = {k for k in children(up.proc.pid) if comm(k) == "nats-server"}
    assert servers, f"no nats-server child of jetdag up (pid {up.proc.pid})"
    return servers


def stop_up(up: Up, sig: signal.Signals) -> None:
    """Send `sig`; `up` must exit 0 and leave no child process (its nats-server above all) behind."""
    kids = children(up.proc.pid) | nats_servers(up)
    up.proc.send_signal(sig)
    try:
        code = up.proc.wait(20)
    except subprocess.TimeoutExpired:
        up.proc.kill()
        up.proc.wait(10)
        raise
    assert code == 0, up.log()
    assert "leaked" not in up.log(), up.log()  # DuckDB's bindings complain of objects never freed
    eventually_sync(lambda: all(exited(k) for k in kids), timeout=10)
    assert not (up.data / "endpoint.json").exists()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
