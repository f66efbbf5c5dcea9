"""Every NATS subject, stream, consumer and bucket name jetdag uses. Nothing else builds them."""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Final

TASKS: Final = "JD_TASKS"
EVENTS: Final = "JD_EVENTS"
INBOX: Final = "JD_INBOX"
DLQ: Final = "JD_DLQ"
TRIGGERS: Final = "JD_TRIGGERS"
"""Captures the subjects of `on_message` triggers that no other stream holds; its subjects follow the workflows."""

RUNS_KV: Final = "jd_runs"
DEFS_KV: Final = "jd_defs"
LEASES_KV: Final = "jd_leases"
WORKERS_KV: Final = "jd_workers"
SCHEDULES_KV: Final = "jd_schedules"
FILES_KV: Final = "jd_files"
BLOBS: Final = "jd_blobs"

PRIORITIES: Final = range(10)  # 0..9, 9 is served first
DEFAULT_PRIORITY: Final = 5
DEFAULT_PARTITIONS: Final = 16
INVALID_DLQ: Final = "_invalid"  # dead letters that belong to no queue (malformed events, submissions)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def is_token(name: str) -> bool:
    """True when `name` can stand as one subject token, consumer name and KV key."""
    return bool(_TOKEN.match(name))


_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]+")


def workflow_key(name: str) -> str:
    """The id a workflow name is stored and addressed under: runs of other characters become `-`.

    "etl_daily" stays "etl_daily"; "My Workflow" becomes "My-Workflow". Empty when nothing is left.
    """
    return name if is_token(name) else _NOT_TOKEN.sub("-", name).strip("-")


def partition_of(run_id: str, partitions: int = DEFAULT_PARTITIONS) -> int:
    """The partition a run belongs to: crc32 of its id, so any language can compute it."""
    return zlib.crc32(run_id.encode()) % partitions


_HANDLER = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


HANDLER_RULE: Final = "letters, digits, '_' and '-', in parts joined by '.'"


def is_handler_name(name: str) -> bool:
    """True when `name` can name a handler: tokens joined by dots (`noop`, `etl.load`)."""
    return bool(_HANDLER.match(name))


def handler_token(handler: str) -> str:
    """A handler name as one subject token and part of a consumer name, where a dot separates."""
    return handler.replace(".", ":")


LABEL_RULE: Final = "letters, digits, '_' and '-'"


def labels_token(labels: Mapping[str, str] | None) -> str:
    """Worker labels (or a task's `requires`) as one subject token: `gpu=true+zone=eu`; '' for none."""
    return "+".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def token_labels(token: str) -> dict[str, str]:
    """The labels of a `labels_token`."""
    return dict(pair.split("=", 1) for pair in token.split("+")) if token else {}


def task_subject(queue: str, priority: int, handler: str, requires: Mapping[str, str] | None = None) -> str:
    """Where a task waits for a worker of `queue` that has `handler` (and the labels it `requires`): a worker
    only takes what it can run."""
    wanted = labels_token(requires)
    return f"jd.task.{queue}.{priority}.{handler_token(handler)}" + (f".{wanted}" if wanted else "")


def task_consumer(queue: str, priority: int, handler: str, requires: Mapping[str, str] | None = None) -> str:
    """The durable consumer of one `task_subject`, shared by every worker that can take its tasks."""
    wanted = labels_token(requires)
    return f"jd_task_{queue}_{priority}_{handler_token(handler)}" + (f"_{wanted}" if wanted else "")


def task_route(subject: str) -> tuple[str, int, str, str] | None:
    """(queue, priority, handler, labels token) of a `task_subject`; None for any other subject."""
    parts = subject.split(".")
    if len(parts) not in (5, 6) or parts[:2] != ["jd", "task"] or not parts[3].isdigit():
        return None
    return parts[2], int(parts[3]), parts[4].replace(":", "."), parts[5] if len(parts) == 6 else ""


def event_subject(partition: int, run_id: str) -> str:
    """Inputs of a run: submissions, task results, its own timers."""
    return f"jd.evt.{partition}.{run_id}"


def checkpoint_subject(reply: str, task: str) -> str:
    """Where a task's checkpoints go (`reply` is its run's `event_subject`): a subject per task, so that the
    last one is one read away for the next attempt; inside `jd.evt.>`, outside the partition's filter."""
    return f"{reply}.checkpoint.{task}"


def step_subject(partition: int, run_id: str) -> str:
    """What the engine decided for a run (transitions); outside the partition consumer's filter."""
    return f"jd.evt.{partition}.{run_id}.step"


def partition_filter(partition: int) -> str:
    return f"jd.evt.{partition}.*"


def partition_consumer(partition: int) -> str:
    return f"jd_part_{partition}"


def dlq_subject(queue: str) -> str:
    return f"jd.dlq.{queue}"


def submit_subject(workflow: str) -> str:
    return f"jd.submit.{workflow}"


def enqueue_subject(queue: str, handler: str) -> str:
    return f"jd.enqueue.{queue}.{handler}"


INBOX_CONSUMER: Final = "jd_inbox"


def command_subject(verb: str) -> str:
    return f"jd.cmd.{verb}"


INTERRUPT: Final = command_subject("interrupt")
"""Core NATS: `{run, task, attempt}` of a running attempt whose run was cancelled; workers stop its handler."""


def gate_key(workflow: str) -> str:
    """The `jd_schedules` key of a workflow's `max_active_runs` gate (its active runs and the line); two tokens,
    so a watch of the schedules (`*`) passes it by."""
    return f"gate.{workflow}"


def file_key(workflow: str, digest: str) -> str:
    """The `jd_files` key of one file a workflow's file trigger has seen (`digest` hashes trigger and path)."""
    return f"{workflow}.{digest}"


def file_record_subject(workflow: str) -> str:
    """Where the file watcher records every file it saw (the run it started, or why none), for the audit log.
    Inside `jd.evt.>`, so the auditor reads it, but no partition's filter (`jd.evt.<p>.*`) takes it."""
    return f"jd.evt.files.{workflow}"


def message_consumer(workflow: str) -> str:
    """The durable consumer that turns the messages of a workflow's `on_message` subject into runs."""
    return f"jd_on_{workflow}"


FIRING: Final = "jd.sched.firing"
"""Core NATS: `{engine, partitions}` an engine sends every quarter second for the partitions it owns, and as it
starts firing a tick of some, so their backups leave those to it (actors/scheduler.py). Lost, it costs a
duplicate publish, nothing more."""

RESERVED_PREFIXES: Final = ("jd.", "$", "_INBOX.")
"""Subjects jetdag or NATS use: an `on_message` trigger cannot listen there."""


def submission_id(run_id: str) -> str:
    """The dedupe id of a run's submission: however many times it is sent, one run starts."""
    return f"{run_id}:submit"


def lease_key(partition: int) -> str:
    return f"partition-{partition}"


AUDITOR_CONSUMER: Final = "jd_auditor"


def audit_subject(verb: str) -> str:
    """Requests to the auditor, the one process that holds the DuckDB file: sql, prune, export, info."""
    return f"jd.audit.{verb}"
