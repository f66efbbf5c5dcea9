"""One error tree for jetdag. Each error keeps its data and builds its message from it."""

from __future__ import annotations

from dataclasses import dataclass


class JetdagError(Exception):
    """Base of every error jetdag raises on purpose."""


class DefinitionError(JetdagError):
    """A workflow definition is invalid; `str()` is `path:line:column: message`."""

    def __init__(self, path: str, line: int, column: int, message: str) -> None:
        self.path, self.line, self.column, self.message = path, line, column, message
        super().__init__(f"{path}:{line}:{column}: {message}")


@dataclass(frozen=True, slots=True)
class DefinitionWarning:
    """A valid definition that may still not say what its author means; `str()` is `path:line:column: warning:
    message`. Not an exception: warnings are reported beside the workflows, never raised, and change no exit
    code."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: warning: {self.message}"


class DefinitionErrors(JetdagError):
    """Every error found in one or more definition files, reported together."""

    def __init__(self, errors: list[DefinitionError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class MessageRejected(JetdagError):
    """A message on `subject` cannot be used; `reason` says why. It is dead-lettered, never retried."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject, self.reason = subject, reason
        super().__init__(f"message on {subject!r} rejected: {reason}")


class StaleOwner(JetdagError):
    """A compare-and-set on `key` lost: someone else wrote it since we read it."""

    def __init__(self, key: str, expected_revision: int) -> None:
        self.key, self.expected_revision = key, expected_revision
        super().__init__(f"{key}: revision {expected_revision} is no longer the latest; another owner wrote it")


class NotFound(JetdagError):
    """No `kind` named `name` exists."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(f"no {kind} named {name!r}")


class ControlError(JetdagError):
    """A run-control request that cannot apply to the run as it is: ignoring a task that did not fail,
    rerunning a run that has not finished, rerunning from a task the run does not have."""


class SubmissionError(JetdagError):
    """A submission the client refuses before sending it: a run id, queue, handler or priority that a run
    cannot have (the inbox rejects the same things when they are published to `jd.submit`/`jd.enqueue`)."""


class ConfigError(JetdagError):
    """A setting is invalid or the environment cannot run jetdag; the message says what to change."""


class ServerError(JetdagError):
    """The embedded nats-server failed; the message carries its own words."""


class AuditError(JetdagError):
    """The auditor refused a request (`refused`: the request is not allowed) or could not answer it."""

    def __init__(self, message: str, refused: bool = False) -> None:
        self.message, self.refused = message, refused
        super().__init__(message)


class AuditUnavailable(ConfigError):
    """No auditor answers: the audit log is served by `jetdag up` or `jetdag auditor`."""


class RunWaitTimeout(JetdagError, TimeoutError):
    """A run did not end within the time it was waited for; the message says where it stands."""

    def __init__(self, run_id: str, timeout: float, status: str, tasks: dict[str, str]) -> None:
        self.run_id, self.timeout, self.status, self.tasks = run_id, timeout, status, tasks
        states = ", ".join(f"{name} {state}" for name, state in tasks.items()) or "no tasks yet"
        super().__init__(f"run {run_id} is still {status} after {timeout:g}s ({states})")


class BackfillTooLarge(JetdagError):
    """A backfill would start more runs than its limit allows."""

    def __init__(self, count: int, limit: int) -> None:
        self.count, self.limit = count, limit
        super().__init__(
            f"the backfill has {count:,} ticks, more than the limit of {limit:,}: "
            "backfill a shorter range, or step by a coarser unit (hour, then day, then month)"
        )
