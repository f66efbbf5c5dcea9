"""What every engine actor shares: the connection, the stores and the settings of this engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jetdag.engine.nats.publisher import Publisher
from jetdag.engine.stores.defs import DefStore
from jetdag.engine.stores.gate import GateStore
from jetdag.engine.stores.runs import RunStore
from jetdag.engine.subjects import DEFAULT_PARTITIONS


@dataclass
class Counters:
    events: int = 0
    rejected: int = 0
    deferred: int = 0
    steps: int = 0
    fired: int = 0
    """Runs started by cron triggers."""
    files: int = 0
    """Runs started by file triggers."""
    messages: int = 0
    """Runs started by message triggers."""


@dataclass
class EngineContext:
    nc: NATS
    js: JetStreamContext
    runs: RunStore
    publisher: Publisher
    defs: DefStore
    gate: GateStore
    engine_id: str
    partitions: int = DEFAULT_PARTITIONS
    idle_timeout: float = 30.0
    """Seconds a run actor may sit idle before it is passivated (dropped from memory)."""
    counters: Counters = field(default_factory=Counters)
