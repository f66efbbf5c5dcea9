"""Leases in KV `jd_leases` (bucket TTL = lease TTL): who owns a partition, fenced by revision.

The bucket also holds one `engine.<id>` key per live engine, put again at every lease renewal: the
roster the engines split the partitions by. The TTL removes the key of an engine that died.
"""

from __future__ import annotations

import contextlib
import re

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.errors import StaleOwner

_NOT_IN_KEYS = re.compile(r"[^-_=a-zA-Z0-9]")


def presence_key(engine_id: str) -> str:
    """The roster key of an engine; ids may hold any text, keys only some characters."""
    return f"engine.{_NOT_IN_KEYS.sub('_', engine_id)}"


class LeaseStore:
    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self.kv, self.js = kv, js

    @classmethod
    async def open(cls, js: JetStreamContext) -> LeaseStore:
        return cls(await js.key_value(S.LEASES_KV), js)

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

    async def announce(self, engine_id: str) -> None:
        """Say this engine is alive for one more lease TTL."""
        await self.kv.put(presence_key(engine_id), engine_id.encode())

    async def withdraw(self, engine_id: str) -> None:
        """Leave the roster at once (a clean stop), so the others take up the partitions without waiting."""
        await self.kv.delete(presence_key(engine_id))

    async def engines(self) -> set[str]:
        """The ids of the engines that announced themselves within the lease TTL.

        Read with direct gets over the roster's subjects, not `keys()`: every KV listing leaves a
        consumer on the server for minutes, and this runs every few seconds on every engine.
        """
        stream, subject = f"KV_{S.LEASES_KV}", f"$KV.{S.LEASES_KV}.engine.>"
        out: set[str] = set()
        seq = 1
        while True:
            try:
                msg = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except NotFoundError:
                return out
            if msg.data and not (msg.headers or {}).get("KV-Operation"):
                out.add(msg.data.decode())
            seq = (msg.seq or seq) + 1
