"""FileWatcher: starts a run for each new file that lands where a workflow's file trigger looks.

It learns of files from inotify (watchfiles; polling where inotify cannot serve, e.g. over its watch limit)
and from a full scan at start and every `rescan` seconds, which also catches what a notification missed
(network filesystems, a queue overflow). A file is taken once its size and mtime have held still for
`settle` seconds: a half-written file waits. It is new to a trigger while `jd_files` holds no record of its
path with that size and mtime, and it was created after the trigger was first applied (the files that were
there before are recorded, not run: only new files start runs).

Every engine watches, since files land on one machine's disk or a filesystem several machines share. The
run's id is derived from the workflow, trigger, path, size and mtime, so two engines taking one file start
one run; an engine that does not own the workflow's partition waits `BACKUP_DELAY` more, by which time the
owner's record usually tells it the file is taken. Every file taken is recorded on `jd.evt.files.<workflow>`
for the audit log's `files` table: the run it started, or why none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import watchfiles

from jetdag.engine import subjects as S
from jetdag.engine.errors import StaleOwner
from jetdag.engine.firing import Firing, submissions
from jetdag.engine.globs import Glob, file_meta, path_time
from jetdag.engine.messages import MSG_ID, pack
from jetdag.engine.model import Trigger
from jetdag.engine.nats.publisher import acked
from jetdag.engine.stores.files import FileStore, SeenFile, file_key

from .catalog import Catalog
from .context import EngineContext
from .scheduler import BACKUP_DELAY, Scheduler

log = logging.getLogger(__name__)

ROOTS_CHECK = 2.0
"""Seconds between looks for watched directories that do not exist yet (inotify cannot watch those)."""

BEFORE = "there before the trigger was applied: only new files start runs"
OFF = "the workflow's schedule is off"


@dataclass(frozen=True, slots=True)
class Watch:
    """One file trigger of one workflow."""

    workflow: str
    key: str
    trigger: Trigger
    globs: tuple[Glob, ...]
    since: float
    """Files created (ctime) before this were there before the trigger."""


@dataclass(slots=True)
class Pending:
    size: int
    mtime: float
    ctime: float
    still_since: float
    """When its size and mtime were last seen to change (monotonic)."""


class FileWatcher:
    def __init__(
        self,
        ctx: EngineContext,
        catalog: Catalog,
        scheduler: Scheduler,
        files: FileStore,
        rank: Callable[[str], int],
        *,
        settle: float = 1.0,
        rescan: float = 30.0,
    ) -> None:
        self.ctx, self.catalog, self.scheduler, self.files, self.rank = ctx, catalog, scheduler, files, rank
        self.settle, self.rescan = settle, rescan
        self.host = socket.gethostname()
        self.watches: list[Watch] = []
        self._by_workflow: dict[str, list[Watch]] = {}
        self.records: dict[str, tuple[SeenFile | None, int]] = {}
        """`jd_files` as watched: key -> (record, revision)."""
        self.pending: dict[str, Pending] = {}
        self._records_ready = asyncio.Event()
        self._roots_changed = asyncio.Event()
        self._watching: list[Path] = []
        self._some_pending = asyncio.Event()

    async def run(self) -> None:
        changes = self.catalog.subscribe()
        try:
            await self.catalog.ready.wait()
            await self._serve(changes)
        finally:
            self.catalog.unsubscribe(changes)

    async def _serve(self, changes: asyncio.Queue[str]) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch_records())
            await self._records_ready.wait()
            await self._refresh(set(self.catalog.specs))
            group.create_task(self._notify())
            group.create_task(self._settle_loop())
            group.create_task(self._roots_loop())
            while True:
                try:
                    changed = {await asyncio.wait_for(changes.get(), timeout=self.rescan)}
                    while not changes.empty():
                        changed.add(changes.get_nowait())
                    await self._refresh(changed)
                except TimeoutError:
                    await self._scan()

    async def _watch_records(self) -> None:
        async for key, record, revision in self.files.watch(on_caught_up=self._records_ready.set):
            self.records[key] = (record, revision)

    async def _refresh(self, workflows: set[str]) -> None:
        """The file triggers of these workflows as their newest versions have them, first-applied times recorded;
        then a full scan, if any of them watches files. (Applying 10,000 workflows without files costs nothing.)"""
        before = {w for w in workflows if w in self._by_workflow}
        for workflow in workflows:
            self._by_workflow.pop(workflow, None)
            found = self.catalog.specs.get(workflow)
            for trigger in found[0].triggers if found else ():
                if not trigger.files:
                    continue
                key = trigger.key("files")
                try:
                    globs = tuple(Glob(pattern) for pattern in trigger.files)
                except ValueError as exc:
                    log.warning("workflow %s: file trigger %s cannot watch: %s", workflow, trigger.files, exc)
                    continue
                watch = Watch(workflow, key, trigger, globs, await self._since(workflow, key))
                self._by_workflow.setdefault(workflow, []).append(watch)
        if not before and not any(w in self._by_workflow for w in workflows):
            return
        roots = {g.root for w in self.watches for g in w.globs}
        self.watches = [w for ws in self._by_workflow.values() for w in ws]
        if {g.root for w in self.watches for g in w.globs} != roots:
            self._roots_changed.set()
        await self._scan()

    async def _since(self, workflow: str, key: str) -> float:
        """When the trigger was first applied: stored in its schedule state the first time an engine sees it."""
        for _ in range(5):
            state, revision = self.catalog.state(workflow)
            progress = state.trigger(key)
            if progress.since is not None:
                return progress.since
            since = self.catalog.applied.get(workflow, time.time())
            changed = state.with_trigger(key, replace(progress, since=since))
            try:
                revision = await self.scheduler.schedules.write(self.ctx.publisher, workflow, changed, revision)
                self.catalog.note(workflow, changed, revision)
                return since
            except StaleOwner:
                await self.catalog.refresh(workflow)
        return time.time()

    def _roots(self) -> list[Path]:
        return sorted({g.root for w in self.watches for g in w.globs if g.root.is_dir()})

    async def _notify(self) -> None:
        """Feed what inotify (or polling) reports into `pending`; start over when the roots change."""
        force_polling: bool | None = None
        while True:
            self._roots_changed.clear()
            roots = self._watching = self._roots()
            if not roots:
                await self._roots_changed.wait()
                continue
            try:
                async for changes in watchfiles.awatch(
                    *roots, watch_filter=None, debounce=400, step=50, stop_event=self._roots_changed,
                    force_polling=force_polling, poll_delay_ms=500, recursive=True, ignore_permission_denied=True,
                    rust_timeout=500,  # the watching thread returns this often: a stop waits for it, at most that
                ):  # fmt: skip
                    for change, path in changes:
                        if change is watchfiles.Change.deleted:
                            self._gone(path)
                        else:
                            self._consider(path)
            except (OSError, RuntimeError) as exc:
                if force_polling:
                    raise
                log.warning("file triggers: inotify cannot watch %s (%s); polling instead", roots, exc)
                force_polling = True

    async def _roots_loop(self) -> None:
        """Notice a watched directory that appears (or goes) soon, not at the next full scan."""
        while True:
            await asyncio.sleep(ROOTS_CHECK)
            if not self.watches:
                continue
            if self._roots() != self._watching:
                self._roots_changed.set()
                await self._scan()

    def _matches(self, path: str) -> Iterator[Watch]:
        for watch in self.watches:
            if any(g.match(path) for g in watch.globs):
                yield watch

    def _consider(self, path: str, st: os.stat_result | None = None) -> None:
        """A path that may be a new file: into `pending` when some trigger wants it and it is not recorded."""
        if not any(True for _ in self._matches(path)):
            return
        try:
            st = st or os.stat(path)
        except OSError:
            self.pending.pop(path, None)
            return
        if not stat.S_ISREG(st.st_mode):
            return
        size, mtime, ctime = st.st_size, st.st_mtime, st.st_ctime
        known = self.pending.get(path)
        if known is not None and (known.size, known.mtime) == (size, mtime):
            return
        if known is None and all(self._taken(w, path, size, mtime) for w in self._matches(path)):
            return
        self.pending[path] = Pending(size, mtime, ctime, time.monotonic())
        self._some_pending.set()

    def _taken(self, watch: Watch, path: str, size: int, mtime: float) -> bool:
        record = self.records.get(file_key(watch.workflow, watch.key, path), (None, 0))[0]
        return record is not None and record.same(size, mtime)

    def _gone(self, path: str) -> None:
        """A file deleted: no longer pending, and forgotten if this machine took it (a file there later is new)."""
        self.pending.pop(path, None)
        for watch in self._matches(path):
            key = file_key(watch.workflow, watch.key, path)
            record, revision = self.records.get(key, (None, 0))
            if record is not None and record.host == self.host and not os.path.exists(path):
                task = asyncio.ensure_future(self.files.forget(key, revision))
                task.add_done_callback(lambda t: t.exception())

    async def _scan(self) -> None:
        """Look at every file the patterns can match (a walk pruned at each pattern's depth, in a thread)."""
        globs = [g for w in self.watches for g in w.globs]

        def walk() -> list[tuple[str, os.stat_result]]:
            found = []
            for glob in globs:
                for path in _walk(glob.root, glob.depth):
                    if glob.match(path):
                        with contextlib.suppress(OSError):
                            found.append((path, os.stat(path)))
            return found

        for path, st in await asyncio.to_thread(walk):
            self._consider(path, st)

    async def _settle_loop(self) -> None:
        """Take the pending files that have held still for `settle` seconds (a non-owner waits BACKUP_DELAY more)."""
        while True:
            if not self.pending:  # nothing to watch settle: no timer while no file comes
                self._some_pending.clear()
                await self._some_pending.wait()
            await asyncio.sleep(min(0.25, self.settle / 2))
            now = time.monotonic()
            ready: list[tuple[str, Pending]] = []
            for path, known in list(self.pending.items()):
                try:
                    st = os.stat(path)
                except OSError:
                    del self.pending[path]
                    continue
                if (st.st_size, st.st_mtime) != (known.size, known.mtime):
                    self.pending[path] = Pending(st.st_size, st.st_mtime, st.st_ctime, now)
                    continue
                owner = all(self.rank(w.workflow) == 0 for w in self._matches(path))
                wait = self.settle + (0.0 if owner else BACKUP_DELAY)
                if now - known.still_since >= wait:
                    del self.pending[path]
                    ready.append((path, known))
            for start in range(0, len(ready), 1000):
                await asyncio.gather(*(self._take(path, known) for path, known in ready[start : start + 1000]))

    async def _take(self, path: str, known: Pending) -> None:
        for watch in list(self._matches(path)):
            if self._taken(watch, path, known.size, known.mtime):
                continue
            try:
                await self._fire(watch, path, known)
            except Exception as exc:  # NATS trouble: the next scan finds the file again
                log.warning("file %s for workflow %s: not taken yet: %s", path, watch.workflow, exc)

    async def _fire(self, watch: Watch, path: str, known: Pending) -> None:
        key = file_key(watch.workflow, watch.key, path)
        found = self.catalog.specs.get(watch.workflow)
        state, _ = self.catalog.state(watch.workflow)
        run_id, reason = "", ""
        if known.ctime < watch.since:
            reason = BEFORE
        elif not state.enabled:
            reason = OFF
        elif found is not None:
            spec, version = found
            stamp = path_time(path)
            firing = Firing(
                watch.trigger, watch.key, known.mtime, stamp.timestamp() if stamp else known.mtime,
                identity=(path, known.size), meta=file_meta(path),
            )  # fmt: skip
            runs = submissions(spec, version, firing, time.time(), read=lambda p: Path(p).read_bytes())
            await self.scheduler.publish(runs)
            run_id = runs[0].run_id
            self.ctx.counters.files += len(runs)
        seen = SeenFile(path, known.size, known.mtime, run_id, reason, self.host, time.time())
        await self._record(watch, seen)
        _, revision = self.records.get(key, (None, 0))
        try:
            revision = await self.files.remember(self.ctx.publisher, key, seen, revision)
            self.records[key] = (seen, revision)
        except StaleOwner:
            pass  # another engine took it first: its record comes through the watch

    async def _record(self, watch: Watch, seen: SeenFile) -> None:
        """The file for the audit log; one record per file version, however many engines take it."""
        body = {
            "v": 1, "k": "file.seen", "run": seen.run, "workflow": watch.workflow, "trigger": watch.key,
            "path": seen.path, "size": seen.size, "mtime": seen.mtime, "ts": seen.at,
        }  # fmt: skip
        if seen.reason:
            body["reason"] = seen.reason
        headers = {MSG_ID: f"file:{file_key(watch.workflow, watch.key, seen.path)}:{seen.size}:{seen.mtime}"}
        await acked([await self.ctx.publisher.publish(S.file_record_subject(watch.workflow), pack(body), headers)])


def _walk(root: Path, depth: int) -> Iterator[str]:
    """The files exactly `depth` levels below `root` (0: root itself, a file pattern without wildcards)."""
    if depth == 0:
        if root.is_file():
            yield str(root)
        return
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if depth == 1:
                    if entry.is_file():
                        yield entry.path
                elif entry.is_dir():
                    yield from _walk(Path(entry.path), depth - 1)
