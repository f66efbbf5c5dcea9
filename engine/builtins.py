"""The built-in handlers every worker knows: `noop`, `sleep`, `command` and `http` (registered on import).

A bad payload raises `Fail` naming the handler and the field: retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shlex
import signal
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from .durations import format_duration, parse_duration
from .errors import JetdagError
from .handlers import Fail, TaskContext, handler

TAIL_BYTES: Final = 8 * 1024
"""How much of the end of stdout, stderr or an HTTP body a result or error keeps."""
JSON_LIMIT: Final = 1024 * 1024
"""HTTP bodies up to this size are parsed as JSON when the content type says so."""
HTTP_TIMEOUT: Final = 30.0
_KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL; a module variable so tests can shorten it
_CHUNK: Final = 64 * 1024
_EXCERPT: Final = 500
_cleanups: set[asyncio.Task[None]] = set()  # strong references: a cleanup outlives its cancelled caller


class CommandFailed(JetdagError):
    """The command exited with a nonzero code (retryable); `details` has the code and the output tails."""

    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr
        self.details: dict[str, Any] = {"exit_code": exit_code, "stdout": stdout, "stderr": stderr}
        status = f"exit code {exit_code}"
        if exit_code < 0:
            with contextlib.suppress(ValueError):
                status += f" (killed by {signal.Signals(-exit_code).name})"
        line = _last_line(stderr) or _last_line(stdout)
        super().__init__(f"{status}: {line}" if line else status)


class CommandTimeout(JetdagError):
    """The command outlived its own `timeout` and its process group was killed (retryable)."""

    def __init__(self, program: str, timeout: float, stdout: str, stderr: str) -> None:
        self.program, self.timeout = program, timeout
        self.details: dict[str, Any] = {"timeout": timeout, "stdout": stdout, "stderr": stderr}
        super().__init__(
            f"command {program!r} timed out after {format_duration(timeout)}; its process group was killed"
        )


class HttpFailed(JetdagError):
    """An HTTP request failed in a way a retry may fix: 408, 429, 5xx, or no answer at all."""

    def __init__(self, message: str, url: str, status: int | None = None, body: str = "") -> None:
        self.url, self.status, self.body = url, status, body
        self.details: dict[str, Any] = {"url": url, "status": status, "body": body}
        super().__init__(message)


@handler("noop")
async def noop(ctx: TaskContext) -> dict[str, Any]:
    """Do nothing and succeed; the payload is ignored."""
    return {}


@handler("sleep")
async def sleep(ctx: TaskContext) -> dict[str, Any]:
    """Sleep for payload `seconds` (a number or a duration like '1.5s')."""
    payload = _payload("sleep", ctx.payload, {"seconds"})
    if "seconds" not in payload:
        raise Fail("sleep: payload needs 'seconds' (a number or a duration like '1.5s')")
    seconds = _duration("sleep", "seconds", payload["seconds"])
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@handler("command")
async def command(ctx: TaskContext) -> dict[str, Any]:
    """Run a program (`argv`, `command`, or `shell: true`) in its own process group; exit 0 succeeds.

    Its own `timeout` or a cancellation kills the whole group: SIGTERM, then SIGKILL after a grace.
    """
    payload = _payload("command", ctx.payload, {"argv", "command", "shell", "env", "cwd", "timeout"})
    argv = _argv(payload)
    # The task's identity is in the environment, so scripts can name outputs or act on the attempt.
    env = {
        **(_env(payload.get("env")) or os.environ),
        "JETDAG_RUN_ID": ctx.run_id,
        "JETDAG_WORKFLOW": ctx.workflow,
        "JETDAG_TASK": ctx.task,
        "JETDAG_ATTEMPT": str(ctx.attempt),
    }
    cwd = _cwd(payload.get("cwd"))
    timeout = _timeout("command", payload) if "timeout" in payload else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        where = "" if "/" in argv[0] else " on PATH"
        raise Fail(f"command: program {argv[0]!r} not found{where}") from None
    except PermissionError:
        raise Fail(f"command: program {argv[0]!r} is not executable (permission denied)") from None
    except OSError as exc:
        if exc.errno != errno.ENOEXEC:
            raise  # e.g. out of processes or file descriptors: a retry may succeed
        raise Fail(f"command: program {argv[0]!r} is not an executable this system can run") from None
    exit_code, out, err = await _supervise(proc, argv[0], timeout)
    if exit_code != 0:
        raise CommandFailed(exit_code, out, err)
    return {"exit_code": 0, "stdout": out, "stderr": err}


@handler("http")
async def http(ctx: TaskContext) -> dict[str, Any]:
    """Send one HTTP request; 2xx succeeds, 408/429/5xx and network errors retry, other codes fail.

    One client per call: simple and isolated, at the cost of a fresh connection per task.
    """
    payload = _payload("http", ctx.payload, {"method", "url", "headers", "body", "json", "params", "timeout"})
    method = payload.get("method", "GET")
    if not isinstance(method, str) or not method.strip():
        raise Fail(f"http: payload 'method' must be an HTTP method like 'GET' or 'POST', got {method!r}")
    method = method.strip().upper()
    url = payload.get("url")
    if not isinstance(url, str) or not url.strip():
        raise Fail("http: payload needs 'url' (a string like 'https://example.com/hook')")
    if "body" in payload and "json" in payload:
        raise Fail("http: payload has both 'body' and 'json'; give one")
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        raise Fail(f"http: payload 'body' must be a string (use 'json' for structured data), got {body!r}")
    headers = _str_map("http", "headers", payload.get("headers"))
    params = payload.get("params")
    if params is not None and not isinstance(params, Mapping):
        raise Fail(f"http: payload 'params' must be a map of query parameters, got {params!r}")
    timeout = _timeout("http", payload) if "timeout" in payload else HTTP_TIMEOUT
    shown = _safe_url(url)
    request = f"{method} {shown}"
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client,
            client.stream(
                method, url, headers=headers, params=params, content=body, json=payload.get("json")
            ) as response,
        ):
            tail, head = _Tail(), bytearray()
            async for chunk in response.aiter_bytes():
                tail.add(chunk)
                if len(head) <= JSON_LIMIT:
                    head += chunk[: JSON_LIMIT + 1 - len(head)]
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.TooManyRedirects) as exc:
        raise Fail(f"http: {request}: {exc}") from None
    except (TimeoutError, httpx.TimeoutException):
        raise HttpFailed(f"http: {request}: no answer within {format_duration(timeout)}", shown) from None
    except httpx.HTTPError as exc:
        raise HttpFailed(f"http: {request}: request failed: {type(exc).__name__}: {exc}", shown) from None
    status = response.status_code
    text = tail.text(response.charset_encoding or "utf-8")
    if 200 <= status < 300:
        result: dict[str, Any] = {"status": status, "body": text}
        if _is_json(response.headers.get("content-type", "")) and len(head) <= JSON_LIMIT:
            with contextlib.suppress(ValueError):
                result["json"] = json.loads(bytes(head))
        return result
    answered = f"http: {request} answered {status} {response.reason_phrase}".rstrip()
    excerpt = " ".join(text.split())[-_EXCERPT:]
    if status in (408, 429) or status >= 500:
        raise HttpFailed(f"{answered}: {excerpt}" if excerpt else answered, shown, status, text)
    raise Fail(
        f"{answered} (retrying will not help)" + (f": {excerpt}" if excerpt else ""),
        details={"url": shown, "status": status, "body": text},
    )


class _Tail:
    """The last TAIL_BYTES of a stream: a huge output costs bounded memory."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > TAIL_BYTES:
            del self.data[: len(self.data) - TAIL_BYTES]
            self.truncated = True

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        while stream is not None and (chunk := await stream.read(_CHUNK)):
            self.add(chunk)

    def text(self, encoding: str = "utf-8") -> str:
        data = bytes(self.data)
        if self.truncated:
            # The cut may land inside a UTF-8 character; drop its orphaned continuation bytes.
            skip = 0
            while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
                skip += 1
            data = data[skip:]
        try:
            return data.decode(encoding, errors="replace")
        except LookupError:
            return data.decode("utf-8", errors="replace")


async def _supervise(
    proc: asyncio.subprocess.Process,
    program: str,
    timeout: float | None,
) -> tuple[int, str, str]:
    """Wait for `proc` and its output; on timeout, cancellation or error, kill its group first."""
    out, err = _Tail(), _Tail()
    io = asyncio.ensure_future(_communicate(proc, out, err))
    try:
        # Shielded so the output keeps flowing while the group is being stopped.
        async with asyncio.timeout(timeout):
            exit_code = await asyncio.shield(io)
    except TimeoutError:
        await _stop_protected(proc, io)
        raise CommandTimeout(program, timeout or 0.0, out.text(), err.text()) from None
    except BaseException:
        await _stop_protected(proc, io)
        raise
    return exit_code, out.text(), err.text()


async def _communicate(proc: asyncio.subprocess.Process, out: _Tail, err: _Tail) -> int:
    await asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr))
    return await proc.wait()


async def _stop_protected(proc: asyncio.subprocess.Process, io: asyncio.Future[int]) -> None:
    # A second cancellation must not abandon the group half-killed: the cleanup runs as its own task.
    cleanup = asyncio.ensure_future(_stop(proc, io))
    _cleanups.add(cleanup)
    cleanup.add_done_callback(_cleanups.discard)
    await asyncio.shield(cleanup)


async def _stop(proc: asyncio.subprocess.Process, io: asyncio.Future[int]) -> None:
    """SIGTERM the process group, give it _KILL_GRACE seconds, SIGKILL whatever is left, and reap."""
    _signal_group(proc, signal.SIGTERM)
    try:
        await asyncio.wait({io}, timeout=_KILL_GRACE)
    finally:
        # Always, even if the leader exited on SIGTERM: group members that ignored it may linger.
        _signal_group(proc, signal.SIGKILL)
    await asyncio.wait({io}, timeout=_KILL_GRACE)
    if not io.done():
        io.cancel()  # a process that left the group (setsid) still holds a pipe; stop reading it
    elif not io.cancelled():
        io.exception()  # mark any error as seen; the caller is already raising its own


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # ProcessLookupError: the group is gone. PermissionError: only zombies are left (macOS says EPERM).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _payload(name: str, payload: Any, allowed: set[str]) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise Fail(f"{name}: payload must be a map, got {type(payload).__name__}")
    unknown = sorted(str(key) for key in payload if key not in allowed)
    if unknown:
        expected = ", ".join(sorted(allowed))
        raise Fail(f"{name}: unknown payload key {unknown[0]!r}; expected one of {expected}")
    return dict(payload)


def _duration(name: str, key: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise Fail(f"{name}: payload '{key}': {exc}") from None


def _timeout(name: str, payload: dict[str, Any]) -> float:
    seconds = _duration(name, "timeout", payload["timeout"])
    if seconds <= 0:
        raise Fail(f"{name}: payload 'timeout' must be more than zero, like '30s'; leave it out for none")
    return seconds


def _argv(payload: dict[str, Any]) -> list[str]:
    argv, text, shell = payload.get("argv"), payload.get("command"), payload.get("shell", False)
    needs = "command: payload needs 'argv' (a list of strings) or 'command' (a string)"
    if not isinstance(shell, bool):
        raise Fail(f"command: payload 'shell' must be true or false, got {shell!r}")
    if argv is not None and text is not None:
        raise Fail("command: payload has both 'argv' and 'command'; give one")
    if shell:
        if not isinstance(text, str) or not text.strip():
            raise Fail("command: 'shell: true' needs 'command' (a string for /bin/sh -c)")
        return ["/bin/sh", "-c", text]
    if argv is not None:
        if not isinstance(argv, list) or not argv or not all(_is_word(a) for a in argv):
            raise Fail(f"{needs}; 'argv' is {argv!r}")
        return [str(a) for a in argv]
    if not isinstance(text, str):
        raise Fail(needs)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise Fail(f"command: cannot split 'command' {text!r}: {exc}") from None
    if not words:
        raise Fail(f"{needs}; 'command' is empty")
    return words


def _is_word(value: Any) -> bool:
    # Numbers are allowed because YAML turns `argv: [sleep, 5]` into an int.
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _env(env: Any) -> dict[str, str] | None:
    if env is None:
        return None
    values = _str_map("command", "env", env)
    bad = [key for key in values if not key or "=" in key or "\0" in key]
    if bad:
        raise Fail(f"command: payload 'env' has an invalid variable name {bad[0]!r}")
    return {**os.environ, **values}


def _cwd(cwd: Any) -> str | None:
    if cwd is not None and (not isinstance(cwd, str) or not os.path.isdir(cwd)):
        raise Fail(f"command: payload 'cwd' {cwd!r} is not an existing directory")
    return cwd


def _str_map(name: str, key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise Fail(f"{name}: payload '{key}' must be a map of names to values, got {value!r}")
    return {k: str(v) for k, v in value.items()}


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _safe_url(url: str) -> str:
    """`url` without its user:password part, for messages and events."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
