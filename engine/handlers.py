"""The handler-facing surface: control exceptions, the task context and the handler registry.

Handlers only report what happened (return, `Retry`, `Fail` or any other exception); the engine's
retry policy decides what comes next. Nothing here touches NATS: the worker supplies `emit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jetdag.engine.durations import parse_duration
from jetdag.engine.subjects import HANDLER_RULE, is_handler_name

Handler = Callable[["TaskContext"], Any]
"""A handler takes the task context and returns a result; it may be sync or async."""

Emit = Callable[[str, dict[str, Any]], None]

H = TypeVar("H", bound=Handler)

_registry: dict[str, Handler] = {}
_options: dict[str, HandlerOptions] = {}


class Retry(Exception):
    """Try this task again, after `delay` seconds if given (else the workflow's retry policy decides)."""

    def __init__(
        self,
        reason: str = "",
        delay: float | None = None,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        if delay is not None and delay < 0:
            raise ValueError(f"Retry delay cannot be negative: {delay!r}")
        self.reason, self.delay = reason, delay
        self.details: dict[str, Any] = dict(details or {})
        super().__init__(reason or "retry requested")


class Fail(Exception):
    """Fail this task now; it is never retried, whatever attempts are left."""

    def __init__(self, reason: str, *, details: dict[str, Any] | None = None) -> None:
        self.reason = reason
        self.details: dict[str, Any] = dict(details or {})
        super().__init__(reason)


def _no_emit(kind: str, data: dict[str, Any]) -> None:
    """Drop the event: a context built outside a worker (tests, scripts) has nowhere to send it."""


@dataclass
class TaskContext:
    """What a handler gets: the task's identity, its payload and run params, and a way to report."""

    run_id: str
    workflow: str
    task: str
    attempt: int
    payload: Any
    params: dict[str, Any] = field(default_factory=dict)
    info: str | None = None
    """The task's rendered `template` (flowlord's info string), if it has one."""
    job: str | None = None
    """flowlord's job name (`task = "topic:job"`), for handlers that serve several jobs of one topic."""
    emit: Emit = field(default=_no_emit, repr=False, compare=False)
    """Publishes a task-scoped event `(kind, data)`; set by the worker, callable from any thread."""
    last_checkpoint: dict[str, Any] | None = None
    """What an earlier attempt of this task last saved with `checkpoint(...)`, to resume from; None on a first
    attempt, or when no attempt saved one."""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once the attempt should stop: its run was cancelled, or its timeout passed. An async handler is
        cancelled where it awaits; a sync one (it runs on a thread, which nothing can stop) should look at this
        between steps and return."""
        return self._stop.is_set()

    def cancel(self) -> None:
        """Set `cancelled` (the worker does, on an interrupt or a timeout)."""
        self._stop.set()

    def progress(
        self,
        done: float | None = None,
        total: float | None = None,
        message: str | None = None,
    ) -> None:
        """Report progress (`done` of `total`, and/or a message) as a `task.progress` event."""
        data = {"done": done, "total": total, "message": message}
        self.emit("task.progress", {k: v for k, v in data.items() if v is not None})

    def audit(self, **data: Any) -> None:
        """Record `data` in the audit log as a `task.audit` event."""
        self.emit("task.audit", data)

    def checkpoint(self, **data: Any) -> None:
        """Save `data` as a `task.checkpoint` event: a later attempt of this task gets the last one as
        `last_checkpoint` and can resume from there."""
        self.emit("task.checkpoint", data)


def _origin(fn: Handler) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{qualname}"


def _same_function(a: Handler, b: Handler) -> bool:
    """The same object, or the same `def` seen again after a module reload."""
    if a is b:
        return True
    if not (inspect.isfunction(a) and inspect.isfunction(b)):
        return False  # two partials or bound methods can share a name and still differ
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """A handler's own defaults, given at registration and applied by the worker that runs it."""

    timeout: float | None = None
    """Seconds an attempt may take when its task sets no `timeout` (the task's own wins)."""
    concurrency: int | None = None
    """At most this many attempts of the handler at once on one worker (within the worker's own limit)."""


_NO_OPTIONS = HandlerOptions()


def handler(name: str, *, timeout: float | str | None = None, concurrency: int | None = None) -> Callable[[H], H]:
    """Register the decorated function (sync or async) as the handler `name`.

    `timeout` (seconds or a duration like "5m") bounds its attempts whose task sets none; `concurrency` caps how
    many of its attempts one worker runs at once (a GPU, a rate-limited API). Registering the same function
    again (a module reload) is fine, and takes its new options; another function under a taken name raises
    ValueError naming both.
    """
    if not isinstance(name, str) or not is_handler_name(name):
        raise ValueError(f"invalid handler name {name!r}: use {HANDLER_RULE}")
    seconds = parse_duration(timeout) if isinstance(timeout, str) else timeout
    if seconds is not None and not seconds > 0:
        raise ValueError(f"handler {name!r}: timeout must be positive, got {timeout!r}")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ValueError(f"handler {name!r}: concurrency must be a whole number of at least 1, got {concurrency!r}")
    options = HandlerOptions(float(seconds) if seconds is not None else None, concurrency)

    def register(fn: H) -> H:
        existing = _registry.get(name)
        if existing is not None and not _same_function(existing, fn):
            raise ValueError(
                f"handler {name!r} is already registered to {_origin(existing)}; "
                f"cannot register {_origin(fn)} under the same name"
            )
        _registry[name] = fn
        _options[name] = options
        with contextlib.suppress(AttributeError):  # bound methods take no attributes; the registry is enough
            fn.__jetdag_handler__ = name  # type: ignore[attr-defined]
        return fn

    return register


def get_handler(name: str) -> Handler | None:
    """The handler registered as `name`, or None."""
    return _registry.get(name)


def options_of(name: str) -> HandlerOptions:
    """The options `name` was registered with (the defaults for one registered without, or not at all)."""
    return _options.get(name, _NO_OPTIONS)


def registered() -> list[str]:
    """The names of all registered handlers, sorted."""
    return sorted(_registry)


def unuse(name: str) -> None:
    """Stop serving the handler `name` (nothing when it is not registered): a worker's running attempts of it
    finish, and its tasks wait for a worker that still has it."""
    _registry.pop(name, None)
    _options.pop(name, None)


Registry = tuple[dict[str, Handler], dict[str, HandlerOptions]]


def snapshot() -> Registry:
    """Every registered handler and its options by name, for `restore`."""
    return dict(_registry), dict(_options)


def restore(saved: Registry) -> None:
    """Register exactly the handlers of a `snapshot` again (a module that failed halfway through a reload)."""
    handlers, options = saved
    _registry.clear()
    _registry.update(handlers)
    _options.clear()
    _options.update(options)


def handlers_of(module: str) -> dict[str, Handler]:
    """The registered handlers defined in `module`, by name."""
    return {name: fn for name, fn in _registry.items() if getattr(fn, "__module__", None) == module}


def handlers_version() -> str:
    """A short digest of the registered handlers and their code: it changes when a reload changes any of them,
    so the Workers page shows which workers run which code."""
    digest = hashlib.sha1()
    for name in sorted(_registry):
        fn = _registry[name]
        code = getattr(fn, "__code__", None)
        body = code.co_code + repr(code.co_consts).encode() if code is not None else repr(fn).encode()
        digest.update(f"{name}={_origin(fn)}:".encode() + hashlib.sha1(body).digest())
    return digest.hexdigest()[:8]


def is_async(fn: Handler) -> bool:
    """Whether calling `fn` gives a coroutine (async functions, partials of them, async `__call__`)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call_method = getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__, not callability
    return call_method is not None and inspect.iscoroutinefunction(call_method)


async def call(fn: Handler, ctx: TaskContext) -> Any:
    """Run `fn` on `ctx`: async handlers in this loop, sync ones in a thread so they never block it.

    Cancelling a sync handler stops the wait, not the thread: the function runs to its end.
    """
    if is_async(fn):
        return await fn(ctx)
    result = await asyncio.to_thread(fn, ctx)
    if inspect.isawaitable(result):
        # A sync wrapper around an async function (some decorators) hands back the coroutine.
        return await result
    return result
