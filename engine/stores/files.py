"""The files file triggers have seen, in KV `jd_files`: key `<workflow>.<digest of trigger and path>`, value the
file's size and mtime when it was taken, and the run it started (or why none).

This is what makes a file fire once across restarts and engines: a file is new to a trigger while no record
holds its path with its size and mtime. A file written again (another size or mtime) is new again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, fields

import msgpack
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jetdag.engine import subjects as S
from jetdag.engine.nats.publisher import Publisher
from jetdag.engine.stores import cas


@dataclass(frozen=True, slots=True)
class SeenFile:
    path: str
    size: int
    mtime: float
    run: str = ""
    """The run it started; empty when it started none."""
    reason: str = ""
    """Why it started none."""
    host: str = ""
    """The machine that took it: only that machine forgets it when the file goes (another may not see it)."""
    at: float = 0.0

    def same(self, size: int, mtime: float) -> bool:
        return self.size == size and abs(self.mtime - mtime) < 1e-6


def file_key(workflow: str, trigger: str, path: str) -> str:
    digest = hashlib.sha1(f"{trigger}\0{path}".encode()).hexdigest()[:24]
    return S.file_key(workflow, digest)


class FileStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> FileStore:
        return cls(await js.key_value(S.FILES_KV))

    async def remember(self, publisher: Publisher, key: str, seen: SeenFile, revision: int) -> int:
        """Store the record if the key is still at `revision` (0: absent); its new revision, StaleOwner when
        another engine wrote it first."""
        return await cas.put(publisher, S.FILES_KV, key, msgpack.packb(asdict(seen), use_bin_type=True), revision)

    async def forget(self, key: str, revision: int) -> None:
        """Drop the record of a file that is gone (a file at that path later is new); nothing if it changed."""
        with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
            await self.kv.delete(key, last=revision)

    async def watch(
        self, on_caught_up: Callable[[], None] | None = None
    ) -> AsyncIterator[tuple[str, SeenFile | None, int]]:
        """Every record, then each change: (key, record or None when deleted, revision)."""
        watcher = await self.kv.watchall()
        try:
            while True:
                entry = await watcher.updates(timeout=None)  # None: as long as it takes
                if entry is None:
                    if on_caught_up is not None:
                        on_caught_up()
                    continue
                if not isinstance(entry, KeyValue.Entry):
                    return
                yield entry.key, decode(entry.value), entry.revision or 0
        finally:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await watcher.stop()


def decode(value: bytes | None) -> SeenFile | None:
    if not value:
        return None
    d = msgpack.unpackb(value, raw=False)
    return SeenFile(**{f.name: d[f.name] for f in fields(SeenFile) if f.name in d})
