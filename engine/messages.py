"""The wire format: msgpack maps with a version field `v`, and the dedupe id of every message.

A worker in another language needs only this module's shapes (documented in the README).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Final

import msgpack
import orjson

from jetdag.engine.errors import MessageRejected
from jetdag.engine.events import EVENT_TYPES, Event, Transition
from jetdag.engine.subjects import task_route

VERSION: Final = 1
MSG_ID: Final = "Nats-Msg-Id"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_map(subject: str, data: bytes) -> dict[str, Any]:
    """A msgpack map, or a JSON object (for people publishing by hand); anything else is rejected."""
    if not data:
        raise MessageRejected(subject, "empty message: expected a msgpack or JSON map")
    try:
        # No msgpack map starts with these bytes, so JSON arrays and strings get a clear "expected a map".
        obj = orjson.loads(data) if data[:1] in b'{[" \t\r\n' else msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException, msgpack.ExtraData) as exc:
        raise MessageRejected(subject, f"not valid msgpack or JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MessageRejected(subject, f"expected a map, got {type(obj).__name__}")
    return obj


# Wire names of event fields differ from the Python ones only where brevity pays on every message.
_RENAME: Final = {"run_id": "run"}
_UNRENAME: Final = {v: k for k, v in _RENAME.items()}


def encode_event(event: Event) -> bytes:
    body: dict[str, Any] = {"v": VERSION, "k": event.kind}
    for f in fields(event):
        value = getattr(event, f.name)
        if value is not None:
            body[_RENAME.get(f.name, f.name)] = value
    return pack(body)


def decode_event(subject: str, data: bytes) -> Event:
    """The event in `data`; MessageRejected names the problem (unknown kind, missing or wrong field)."""
    body = unpack_map(subject, data)
    if body.get("v") != VERSION:
        raise MessageRejected(subject, f"unsupported version v={body.get('v')!r} (this engine speaks v={VERSION})")
    kind = body.get("k")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageRejected(subject, f"unknown event kind {kind!r}; known: {', '.join(sorted(EVENT_TYPES))}")
    args = {_UNRENAME.get(k, k): v for k, v in body.items() if k not in ("v", "k")}
    try:
        event = cls(**args)
    except TypeError as exc:
        raise MessageRejected(subject, f"{kind}: {exc}") from exc
    _check_types(subject, event)
    return event


_REQUIRED: Final[dict[str, type | tuple[type, ...]]] = {
    "run_id": str,
    "task": str,
    "attempt": int,
    "ts": (int, float),
    "workflow": str,
    "reason": str,
    "by": str,
}
_OPTIONAL: Final[dict[str, type | tuple[type, ...]]] = {
    "done": dict,
    "rerun_of": str,
    "started": (int, float),
    "meta": dict,
    "start": list,
    "trigger": str,
    "due": (int, float),
}


def _check_types(subject: str, event: Event) -> None:
    for name, kind in _REQUIRED.items():
        if hasattr(event, name) and not isinstance(getattr(event, name), kind):
            raise MessageRejected(subject, f"{event.kind}: field {_RENAME.get(name, name)!r} has the wrong type")
    for name, kind in _OPTIONAL.items():
        value = getattr(event, name, None)
        if value is not None and not isinstance(value, kind):
            raise MessageRejected(subject, f"{event.kind}: field {name!r} has the wrong type")
    if hasattr(event, "attempt") and getattr(event, "attempt") < 1:  # noqa: B009
        raise MessageRejected(subject, f"{event.kind}: attempt must be >= 1")
    run_token = subject.rsplit(".", 1)[-1]
    if subject.startswith("jd.evt.") and run_token != event.run_id:
        raise MessageRejected(subject, f"run id {event.run_id!r} does not match the subject")


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One attempt of one task, as a worker receives it on `jd.task.<queue>.<prio>.<handler>`."""

    run_id: str
    workflow: str
    task: str
    attempt: int
    handler: str
    payload: Any
    params: dict[str, Any]
    reply: str
    """The subject to publish task.started / task.succeeded / task.failed to."""
    timeout: float | None = None
    queue: str = "default"
    priority: int = 5
    info: str | None = None
    """The task's rendered template (flowlord's info string)."""
    job: str | None = None


def encode_task(msg: TaskMessage) -> bytes:
    # Optional fields left unset are not sent: most tasks have no info, job or timeout.
    body = {
        _RENAME.get(f.name, f.name): getattr(msg, f.name)
        for f in fields(msg)
        if getattr(msg, f.name) is not None or f.default is MISSING
    }
    body["v"] = VERSION
    return pack(body)


def decode_task(subject: str, data: bytes) -> TaskMessage:
    body = unpack_map(subject, data)
    if body.get("v") != VERSION:
        raise MessageRejected(subject, f"unsupported version v={body.get('v')!r} (this worker speaks v={VERSION})")
    args = {_UNRENAME.get(k, k): v for k, v in body.items() if k != "v"}
    try:
        msg = TaskMessage(**args)
    except TypeError as exc:
        raise MessageRejected(subject, f"task message: {exc}") from exc
    for name, kind in (("run_id", str), ("task", str), ("handler", str), ("reply", str), ("attempt", int)):
        if not isinstance(getattr(msg, name), kind):
            raise MessageRejected(subject, f"task message: field {_RENAME.get(name, name)!r} has the wrong type")
    if not msg.reply.startswith("jd.evt."):
        raise MessageRejected(subject, f"task message: reply subject {msg.reply!r} is not a jd.evt subject")
    route = task_route(subject)
    if route is not None and route[2] != msg.handler:
        raise MessageRejected(subject, f"task message: handler {msg.handler!r} on the subject of handler {route[2]!r}")
    return msg


def encode_step_parts(run_id: str, seq: int, status: str, transitions: list[Transition], limit: int) -> list[bytes]:
    """The step record, in as many records of the same `seq` as it takes for each to be at most `limit`
    bytes (a step that readies 100,000 tasks is a 4.7 MB record; NATS refuses a message over its
    max_payload, 8 MB, and a record that can never be sent would fail its step for good). Readers take
    each record's transitions as they come, so a step's parts need no joining."""
    record = encode_step(run_id, seq, status, transitions)
    if len(record) <= limit or len(transitions) < 2:
        return [record]
    half = len(transitions) // 2
    return [
        *encode_step_parts(run_id, seq, status, transitions[:half], limit),
        *encode_step_parts(run_id, seq, status, transitions[half:], limit),
    ]


def encode_step(run_id: str, seq: int, status: str, transitions: list[Transition]) -> bytes:
    """The record of one step of a run: its status after the step and every transition in it."""
    return pack(
        {
            "v": VERSION,
            "k": "run.step",
            "run": run_id,
            "seq": seq,
            "status": status,
            "transitions": [
                {
                    k: v
                    for k, v in (
                        ("task", t.task),
                        ("attempt", t.attempt),
                        ("status", t.status),
                        ("ts", t.ts),
                        ("error", t.error),
                    )
                    if v is not None
                }
                for t in transitions
            ],
        }
    )


def command_id(run_id: str, verb: str, caller_id: str) -> str:
    """The dedupe id of an operator's command to a run: `<run>:cmd:<verb>:<caller id>` (a retry sends the same)."""
    return f"{run_id}:cmd:{verb}:{caller_id}"


def encode_interrupt(run_id: str, task: str, attempt: int) -> bytes:
    """The core-NATS message on `jd.cmd.interrupt` asking workers to stop one running attempt."""
    return pack({"v": VERSION, "run": run_id, "task": task, "attempt": attempt})


def msg_id(run_id: str, task: str, attempt: int, kind: str) -> str:
    """The dedupe id of a message about one attempt: `<run>:<task>:<attempt>:<kind>`."""
    return f"{run_id}:{task}:{attempt}:{kind}"
