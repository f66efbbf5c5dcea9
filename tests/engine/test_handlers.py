"""The handler surface (registry, TaskContext, call) and the built-in handlers; no NATS needed."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jetdag.engine import builtins, handlers
from jetdag.engine.builtins import TAIL_BYTES, CommandFailed, CommandTimeout, HttpFailed
from jetdag.engine.handlers import Fail, Retry, TaskContext, call, get_handler, handler, is_async, registered


def _ctx(payload: Any = None, emit: Callable[[str, dict[str, Any]], None] | None = None) -> TaskContext:
    ctx = TaskContext(run_id="r1", workflow="wf", task="t", attempt=1, payload=payload, params={})
    if emit is not None:
        ctx.emit = emit
    return ctx


async def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(0.02)  # wait-ok: polling interval, bounded by the deadline


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handlers registered by a test vanish after it; the built-ins stay visible."""
    monkeypatch.setattr(handlers, "_registry", dict(handlers._registry))


# --- registry ---------------------------------------------------------------------------------------


def _make_handler() -> Callable[[TaskContext], Any]:
    async def same(ctx: TaskContext) -> str:
        return "same"

    return same


def test_handler_registers_and_marks_the_function(isolated_registry: None) -> None:
    @handler("test.greet")
    def greet(ctx: TaskContext) -> str:
        return "hi"

    assert get_handler("test.greet") is greet
    assert greet.__jetdag_handler__ == "test.greet"
    assert "test.greet" in registered()
    assert registered() == sorted(registered())
    assert get_handler("test.missing") is None


def test_registering_another_function_under_a_taken_name_names_both(isolated_registry: None) -> None:
    @handler("test.dup")
    def first(ctx: TaskContext) -> None: ...

    def second(ctx: TaskContext) -> None: ...

    with pytest.raises(ValueError, match=r"first.*second"):
        handler("test.dup")(second)
    assert get_handler("test.dup") is first


def test_two_partials_under_one_name_conflict(isolated_registry: None) -> None:
    def base(ctx: TaskContext, n: int) -> int:
        return n

    handler("test.partial")(functools.partial(base, n=1))
    with pytest.raises(ValueError, match="already registered"):
        handler("test.partial")(functools.partial(base, n=2))


def test_registering_the_same_function_again_is_fine(isolated_registry: None) -> None:
    fn = _make_handler()
    handler("test.same")(fn)
    handler("test.same")(fn)
    reloaded = _make_handler()  # a module reload makes a new object with the same module and qualname
    handler("test.same")(reloaded)
    assert get_handler("test.same") is reloaded


@pytest.mark.parametrize("name", ["", "has space", "a/b", "é", "x*"])
def test_invalid_handler_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid handler name"):
        handler(name)


def test_builtins_are_registered() -> None:
    assert {"noop", "sleep", "command", "http"} <= set(registered())
    assert get_handler("command") is builtins.command


def test_control_exceptions_keep_their_data() -> None:
    retry = Retry("busy", delay=5, details={"queue": 3})
    assert (retry.reason, retry.delay, retry.details) == ("busy", 5, {"queue": 3})
    assert Fail("bad input").details == {}
    with pytest.raises(ValueError, match="negative"):
        Retry(delay=-1)


# --- TaskContext and call ---------------------------------------------------------------------------


def test_context_reports_progress_audit_and_checkpoint_as_events() -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = _ctx(emit=lambda kind, data: events.append((kind, data)))
    ctx.progress(3, 10)
    ctx.progress(message="half way")
    ctx.audit(rows=7)
    ctx.checkpoint(offset=42)
    assert events == [
        ("task.progress", {"done": 3, "total": 10}),
        ("task.progress", {"message": "half way"}),
        ("task.audit", {"rows": 7}),
        ("task.checkpoint", {"offset": 42}),
    ]


def test_context_without_a_worker_drops_events() -> None:
    _ctx().progress(1, 2)


async def test_call_runs_sync_handlers_in_another_thread() -> None:
    seen: list[int] = []

    def blocking(ctx: TaskContext) -> str:
        seen.append(threading.get_ident())
        return ctx.task

    assert not is_async(blocking)
    assert await call(blocking, _ctx()) == "t"
    assert seen and seen[0] != threading.get_ident()


async def test_call_awaits_async_handlers_in_the_loop() -> None:
    seen: list[int] = []

    async def nonblocking(ctx: TaskContext) -> int:
        seen.append(threading.get_ident())
        return ctx.attempt

    assert await call(nonblocking, _ctx()) == 1
    assert seen == [threading.get_ident()]


async def test_is_async_sees_through_partials_and_callable_objects() -> None:
    async def base(ctx: TaskContext, extra: int) -> int:
        return extra

    class Callable_:
        async def __call__(self, ctx: TaskContext) -> str:
            return "obj"

    assert is_async(functools.partial(base, extra=2))
    assert is_async(Callable_())
    assert await call(Callable_(), _ctx()) == "obj"


# --- noop and sleep ---------------------------------------------------------------------------------


async def test_noop_and_sleep() -> None:
    assert await call(builtins.noop, _ctx({"anything": 1})) == {}
    assert await call(builtins.sleep, _ctx({"seconds": "10ms"})) == {"slept": 0.01}
    assert await call(builtins.sleep, _ctx({"seconds": 0})) == {"slept": 0.0}


@pytest.mark.parametrize(
    ("payload", "match"),
    [(None, "sleep: payload needs 'seconds'"), ({"seconds": "soon"}, "sleep: payload 'seconds'"), (3, "map")],
)
async def test_sleep_rejects_bad_payloads(payload: Any, match: str) -> None:
    with pytest.raises(Fail, match=match):
        await call(builtins.sleep, _ctx(payload))


# --- command ----------------------------------------------------------------------------------------

PY = sys.executable


async def _command(payload: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await call(builtins.command, _ctx(payload))
    return result


async def test_command_runs_argv_without_a_shell() -> None:
    result = await _command({"argv": ["echo", "$HOME", 5]})
    assert result == {"exit_code": 0, "stdout": "$HOME 5\n", "stderr": ""}


async def test_command_string_is_split_like_a_shell_but_not_run_by_one() -> None:
    result = await _command({"command": "printf '%s|' 'a b' c $HOME"})
    assert result["stdout"] == "a b|c|$HOME|"


async def test_command_with_shell_runs_through_sh() -> None:
    result = await _command({"shell": True, "command": "echo $((1 + 2)) | tr 3 x; echo err >&2"})
    assert (result["stdout"], result["stderr"]) == ("x\n", "err\n")


@pytest.fixture
def real_tmp_path(tmp_path: Path) -> Path:
    """tmp_path with symlinks resolved, as a child's getcwd() reports it."""
    return tmp_path.resolve()


async def test_command_env_is_merged_over_the_environment_and_cwd_is_used(real_tmp_path: Path) -> None:
    code = "import os; print(os.environ['JD_TEST'], 'PATH' in os.environ, os.getcwd())"
    cwd = str(real_tmp_path)
    result = await _command({"argv": [PY, "-c", code], "env": {"JD_TEST": 7}, "cwd": cwd})
    assert result["stdout"] == f"7 True {cwd}\n"


async def test_nonzero_exit_raises_command_failed_with_the_stderr_tail() -> None:
    script = "echo out; echo first >&2; echo boom >&2; echo >&2; exit 3"
    with pytest.raises(CommandFailed) as failed:
        await _command({"shell": True, "command": script})
    assert str(failed.value) == "exit code 3: boom"
    assert failed.value.details == {"exit_code": 3, "stdout": "out\n", "stderr": "first\nboom\n\n"}


async def test_nonzero_exit_without_stderr_quotes_stdout() -> None:
    with pytest.raises(CommandFailed, match=r"^exit code 1: only this$"):
        await _command({"shell": True, "command": "echo only this; exit 1"})


async def test_large_output_keeps_only_the_tail() -> None:
    # 'é' is two bytes; the odd 'x' makes the cut land inside a character, which must not show as U+FFFD.
    code = "import sys; sys.stdout.write('é' * 10000 + 'x'); sys.stderr.write('e' * 50000 + 'END'); exit(2)"
    with pytest.raises(CommandFailed) as failed:
        await _command({"argv": [PY, "-c", code]})
    out, err = failed.value.details["stdout"], failed.value.details["stderr"]
    assert err == "e" * (TAIL_BYTES - 3) + "END"
    assert out.endswith("éx") and "\ufffd" not in out and len(out.encode()) == TAIL_BYTES - 1


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is dead, just not reaped


def _group_script(pidfile: Path, ignore_term: bool = False) -> dict[str, Any]:
    """A shell that backgrounds a grandchild `sleep 30`, records both pids, then becomes `sleep 30`."""
    trap = "trap '' TERM; " if ignore_term else ""
    script = f'{trap}sleep 30 & printf "%s %s" $! $$ > "$PIDS.tmp" && mv "$PIDS.tmp" "$PIDS"; exec sleep 30'
    return {"shell": True, "command": script, "env": {"PIDS": str(pidfile)}}


def _read_pids(pidfile: Path) -> list[int]:
    return [int(p) for p in pidfile.read_text().split()]


async def _assert_all_gone(pidfile: Path) -> None:
    pids = _read_pids(pidfile)
    assert len(pids) == 2
    try:
        await _eventually(lambda: not any(_alive(pid) for pid in pids))
    except AssertionError:
        survivors = [pid for pid in pids if _alive(pid)]
        for pid in survivors:  # never leak a regression's processes into the rest of the run
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"processes {survivors} of the command's group outlived it") from None


async def test_own_timeout_kills_the_child_and_its_grandchild(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    with pytest.raises(CommandTimeout, match="timed out after 1s") as timed_out:
        await _command({**_group_script(pidfile), "timeout": "1s"})
    assert timed_out.value.details["timeout"] == 1.0
    await _assert_all_gone(pidfile)


async def test_cancelling_the_handler_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    running = asyncio.create_task(_command(_group_script(pidfile)))
    await _eventually(pidfile.exists)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await _assert_all_gone(pidfile)


async def test_a_group_ignoring_sigterm_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtins, "_KILL_GRACE", 0.2)
    pidfile = tmp_path / "pids"
    running = asyncio.create_task(_command(_group_script(pidfile, ignore_term=True)))
    await _eventually(pidfile.exists)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await _assert_all_gone(pidfile)


async def test_missing_or_unexecutable_program_fails_without_retry(tmp_path: Path) -> None:
    with pytest.raises(Fail, match="program 'jetdag-no-such-program' not found on PATH"):
        await _command({"argv": ["jetdag-no-such-program"]})
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(Fail, match="is not executable"):
        await _command({"argv": [str(script)]})


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (None, r"command: payload needs 'argv' \(a list of strings\) or 'command' \(a string\)"),
        ({"argv": []}, "command: payload needs 'argv'"),
        ({"argv": "ls -l"}, "command: payload needs 'argv'"),
        ({"argv": ["ls", None]}, "command: payload needs 'argv'"),
        ({"argv": ["ls"], "command": "ls"}, "both 'argv' and 'command'"),
        ({"shell": True}, "'shell: true' needs 'command'"),
        ({"shell": "yes", "command": "ls"}, "'shell' must be true or false"),
        ({"command": "echo 'unclosed"}, "cannot split 'command'"),
        ({"argv": ["true"], "timeout": "soon"}, "command: payload 'timeout'"),
        ({"argv": ["true"], "timeout": 0}, "must be more than zero"),
        ({"argv": ["true"], "cwd": "/jetdag/no/such/dir"}, "'cwd' '/jetdag/no/such/dir' is not an existing"),
        ({"argv": ["true"], "env": ["A=1"]}, "'env' must be a map"),
        ({"argv": ["true"], "env": {"A=B": "1"}}, "invalid variable name 'A=B'"),
        ({"argv": ["true"], "timout": "1s"}, "unknown payload key 'timout'"),
        ("ls", "command: payload must be a map"),
    ],
)
async def test_command_rejects_bad_payloads(payload: Any, match: str) -> None:
    with pytest.raises(Fail, match=match):
        await call(builtins.command, _ctx(payload))


# --- http -------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    release = threading.Event()


class _Routes(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if path == "/echo":
            echo = {
                "method": self.command,
                "query": query,
                "body": body,
                "x-test": self.headers.get("X-Test"),
            }
            self._send(200, json.dumps(echo), "application/json; charset=utf-8")
        elif path == "/big.json":
            self._send(200, "[" + "0," * 600_000 + "0]", "application/json")
        elif path == "/hang":
            self.server.release.wait(30)
            self._send(200, "late", "text/plain")
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), f"went wrong\nreason {path}", "text/plain")
        else:
            self._send(404, "no route", "text/plain")

    do_POST = do_PUT = do_GET

    def _send(self, status: int, text: str, content_type: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


@pytest.fixture
def server() -> Iterator[str]:
    """A real HTTP server on a free loopback port, stopped at teardown."""
    srv = _Server(("127.0.0.1", 0), _Routes)
    srv.release = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


async def _http(payload: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await call(builtins.http, _ctx(payload))
    return result


async def test_http_2xx_returns_status_body_and_parsed_json(server: str) -> None:
    payload = {
        "method": "post",
        "url": f"{server}/echo",
        "json": {"a": 1},
        "params": {"q": "x y"},
        "headers": {"X-Test": 5},
    }
    result = await _http(payload)
    assert result["status"] == 200
    assert result["json"] == {"method": "POST", "query": "q=x+y", "body": '{"a":1}', "x-test": "5"}
    assert json.loads(result["body"]) == result["json"]


async def test_http_sends_a_text_body(server: str) -> None:
    result = await _http({"method": "PUT", "url": f"{server}/echo", "body": "plain text"})
    assert result["json"]["body"] == "plain text"


async def test_http_large_json_keeps_the_tail_and_skips_parsing(server: str) -> None:
    result = await _http({"url": f"{server}/big.json"})
    assert "json" not in result
    assert len(result["body"]) == TAIL_BYTES and result["body"].endswith(",0]")


async def test_http_404_fails_without_retry(server: str) -> None:
    expected = r"GET .*/status/404 answered 404 Not Found \(retrying will not help\): went"
    with pytest.raises(Fail, match=expected):
        await _http({"url": f"{server}/status/404"})


@pytest.mark.parametrize("status", [503, 429, 408])
async def test_http_retryable_statuses_raise_http_failed(server: str, status: int) -> None:
    with pytest.raises(HttpFailed, match=f"answered {status}") as failed:
        await _http({"url": f"{server}/status/{status}"})
    assert failed.value.details["status"] == status
    assert failed.value.details["body"] == f"went wrong\nreason /status/{status}"


async def test_http_connection_refused_is_retryable_and_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:secret@127.0.0.1:{port}/hook"
    with pytest.raises(HttpFailed, match=f"GET http://127.0.0.1:{port}/hook: request failed") as failed:
        await _http({"url": url})
    assert "secret" not in str(failed.value)


async def test_http_timeout_is_retryable(server: str) -> None:
    with pytest.raises(HttpFailed, match="no answer within 200ms"):
        await _http({"url": f"{server}/hang", "timeout": "200ms"})


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({}, "http: payload needs 'url'"),
        ({"url": "http://x", "body": "a", "json": {}}, "both 'body' and 'json'"),
        ({"url": "http://x", "body": {"a": 1}}, "'body' must be a string"),
        ({"url": "http://x", "method": 3}, "'method' must be an HTTP method"),
        ({"url": "http://x", "headers": ["a"]}, "'headers' must be a map"),
        ({"url": "http://x", "timeout": "fast"}, "http: payload 'timeout'"),
        ({"url": "ftp://example.com/file"}, "http: GET ftp://example.com/file"),
    ],
)
async def test_http_rejects_bad_payloads(payload: Any, match: str) -> None:
    with pytest.raises(Fail, match=match):
        await call(builtins.http, _ctx(payload))


def test_handler_options_are_checked_at_registration() -> None:
    with pytest.raises(ValueError, match="handler 't_opts': timeout must be positive, got 0"):
        handler("t_opts", timeout=0)
    with pytest.raises(ValueError, match="handler 't_opts': concurrency must be a whole number of at least 1"):
        handler("t_opts", concurrency=0)
    with pytest.raises(ValueError, match="invalid duration"):
        handler("t_opts", timeout="soon")
