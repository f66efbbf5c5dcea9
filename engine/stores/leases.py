"""Leases in KV `jd_leases` (bucket TTL = lease TTL): who owns a partition, fenced by revision."""

from __future__ import annotations

import contextlib

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.errors import StaleOwner


class LeaseStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> LeaseStore:
        return cls(await js.key_value(S.LEASES_KV))

    async def acquire(self, key: str, owner: str) -> int | None:
        """The lease's revision (the fencing token) if it was free or already `owner`'s; None when held."""
        try:
            return await self.kv.create(key, owner.encode())
        except KeyWrongLastSequenceError:
            pass
        try:  # still ours from before a restart: take it back without waiting for the TTL
            entry = await self.kv.get(key)
            if entry.value == owner.encode() and entry.revision:
                return await self.kv.update(key, owner.encode(), last=entry.revision)
        except (KeyNotFoundError, KeyWrongLastSequenceError):
            pass
        return None

    async def renew(self, key: str, owner: str, revision: int) -> int:
        """Extend a held lease; StaleOwner when it lapsed and someone else took it."""
        try:
            return await self.kv.update(key, owner.encode(), last=revision)
        except KeyWrongLastSequenceError as exc:
            raise StaleOwner(f"{S.LEASES_KV}/{key}", revision) from exc

    async def release(self, key: str, revision: int) -> None:
        with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
            await self.kv.delete(key, last=revision)

    async def holder(self, key: str) -> str | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None
