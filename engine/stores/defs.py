"""Workflow definitions in KV `jd_defs`: key = workflow name; each revision is a version."""

from __future__ import annotations

from enum import StrEnum

from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.errors import NotFound
from jetdag.engine.model import WorkflowSpec
from jetdag.engine.stores import packing


class Applied(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


class DefStore:
    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self.kv, self.js = kv, js
        self._cache: dict[tuple[str, int], WorkflowSpec] = {}

    @classmethod
    async def open(cls, js: JetStreamContext) -> DefStore:
        return cls(await js.key_value(S.DEFS_KV), js)

    async def apply(self, spec: WorkflowSpec) -> tuple[Applied, int]:
        """Store `spec` as the newest version unless it equals the current one.

        Large definitions are stored compressed (packing.py); ValueTooLarge when even that is over max_payload.
        """
        data = packing.encode(spec.to_dict())
        try:
            entry = await self.kv.get(spec.name)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value == data:
            return Applied.UNCHANGED, entry.revision or 0
        try:
            revision = await self.kv.put(spec.name, data)
        except MaxPayloadError:
            raise packing.too_large(f"workflow {spec.name!r} ({len(spec.tasks):,} tasks)", data, self.kv) from None
        return (Applied.UPDATED if entry is not None and entry.value else Applied.CREATED), revision

    async def get(self, name: str, revision: int | None = None) -> tuple[WorkflowSpec, int]:
        """The workflow as of `revision` (the newest when None); NotFound when there is none."""
        if revision is not None and (name, revision) in self._cache:
            return self._cache[(name, revision)], revision
        try:
            entry = await self.kv.get(name, revision=revision)
        except KeyNotFoundError:
            raise NotFound("workflow", name if revision is None else f"{name}@{revision}") from None
        if not entry.value:
            raise NotFound("workflow", name)
        spec = WorkflowSpec.from_dict(packing.decode(entry.value))
        rev = entry.revision or 0
        self._cache[(name, rev)] = spec
        return spec, rev

    def remember(self, name: str, revision: int, spec: WorkflowSpec) -> None:
        """A version read elsewhere (the engine's catalog watches them all): its runs need not read it again."""
        self._cache[(name, revision)] = spec

    async def names(self) -> list[str]:
        """Every workflow's name (one deleted may be among them: `get` says NotFound for it). Read from the
        bucket's subject index: `kv.keys()` leaves a consumer behind per call (engine/stores/keys.py)."""
        info = await self.js.stream_info(f"KV_{S.DEFS_KV}", subjects_filter=f"$KV.{S.DEFS_KV}.>")
        prefix = len(f"$KV.{S.DEFS_KV}.")
        return sorted(subject[prefix:] for subject in info.state.subjects or {})
