"""Durable storage: SQLite in WAL mode through aiosqlite, with group commit.

What lives where:
- SQLite holds every key's value (msgpack bytes) or tombstone, with its
  version tag. It is the only durable state.
- ``index`` holds every key's committed version tag and tombstone flag in
  memory, as Bitcask keeps its keydir: version look-ups (for writes now and
  quorum rounds next) and GETs of missing keys never touch the disk, while
  values may outgrow RAM.
- ``ValueCache`` holds recently used values, so a GET of a hot key is answered
  without a hop to SQLite's thread.
- ``pending`` holds writes accepted but not yet committed. They count when a
  new version is chosen, so two writes to one key never get the same tag, but
  no read sees them until they are durable.

Writes go through the group committer: whatever arrives while a transaction
is committing goes into the next transaction together. A write's future
resolves only after its transaction has committed with the configured
``PRAGMA synchronous``, and after the index and cache show it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import msgpack

from ..protocol.errors import InternalServerError
from ..protocol.messages import NO_VERSION, Version
from .cache import ValueCache
from .config import SyncMode
from .futures import then

log = logging.getLogger("kvwire.storage")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB,
    counter INTEGER NOT NULL,
    node TEXT NOT NULL,
    deleted INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hints (
    peer TEXT NOT NULL,
    key TEXT NOT NULL,
    counter INTEGER NOT NULL,
    node TEXT NOT NULL,
    PRIMARY KEY (peer, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

# The WHERE clause repeats in SQL the rule the index already enforces: a row
# is replaced only by a higher version tag, so replays are harmless even if
# one batch carries two versions of a key.
UPSERT = """
INSERT INTO kv (key, value, counter, node, deleted) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value, counter = excluded.counter,
    node = excluded.node, deleted = excluded.deleted
WHERE (excluded.counter, excluded.node) > (kv.counter, kv.node)
"""


# A hint says "peer needs key at this version at least". It holds no value:
# replaying sends the key's current row, which is that version or newer.
HINT_UPSERT = """
INSERT INTO hints (peer, key, counter, node) VALUES (?, ?, ?, ?)
ON CONFLICT (peer, key) DO UPDATE SET counter = excluded.counter, node = excluded.node
WHERE (excluded.counter, excluded.node) > (hints.counter, hints.node)
"""
HINT_DELETE = "DELETE FROM hints WHERE peer = ? AND key = ? AND (counter, node) <= (?, ?)"


class Entry(NamedTuple):
    version: Version
    deleted: bool


class _Write(NamedTuple):
    key: str
    version: Version
    deleted: bool
    value: Any  # the decoded value, for the cache
    packed: bytes | None  # what SQLite stores; None for a tombstone
    future: asyncio.Future


class StorageError(InternalServerError):
    """The disk refused a write; the client is told, and nothing is acknowledged."""


class DataDirError(Exception):
    """The data directory cannot be used by this node."""


class Storage:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, cache_entries: int, max_batch_rows: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer = writer
        self._reader = reader
        self.index: dict[str, Entry] = {}
        self.pending: dict[str, Entry] = {}
        # key -> the future of its newest pending write
        self._pending_commits: dict[str, asyncio.Future] = {}
        self.cache = ValueCache(cache_entries)
        self._max_batch_rows = max_batch_rows
        self._queue: list[_Write] = []
        # peer -> key -> version the peer must get; mirrors the hints table.
        self.hints: dict[str, dict[str, Version]] = {}
        self._hint_rows: list[tuple[str, str, int, str]] = []
        self._unhint_rows: list[tuple[str, str, int, str]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._committer = asyncio.create_task(self._commit_forever(), name="kvwire-group-commit")
        self.commits = 0
        self.committed_rows = 0

    @classmethod
    async def open(
        cls, data_dir: Path, *, node_id: str, sync: SyncMode, cache_entries: int, max_batch_rows: int = 4096
    ) -> Storage:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "kvwire.sqlite3"
        # sqlite3's default transaction handling opens a transaction before the
        # first INSERT by itself, which saves a BEGIN round trip to aiosqlite's
        # thread (about 25 us, GUIDE section 4) on every group commit.
        writer = await aiosqlite.connect(path)
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            await writer.execute(f"PRAGMA synchronous={sync.value.upper()}")
            await writer.executescript(SCHEMA)
            await _claim_for_node(writer, node_id, path)
            await writer.commit()
            reader = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            await writer.close()
            raise
        storage = cls(writer, reader, cache_entries, max_batch_rows)
        await storage._load_index()
        log.info("opened %s: %d keys (%d tombstones), sync=%s", path, len(storage.index),
                 sum(entry.deleted for entry in storage.index.values()), sync.value)
        return storage

    async def _load_index(self) -> None:
        async with self._reader.execute("SELECT key, counter, node, deleted FROM kv") as cursor:
            while rows := await cursor.fetchmany(10_000):
                for key, counter, node, deleted in rows:
                    self.index[key] = Entry(Version(counter, node), bool(deleted))
        async with self._reader.execute("SELECT peer, key, counter, node FROM hints") as cursor:
            while rows := await cursor.fetchmany(10_000):
                for peer, key, counter, node in rows:
                    self.hints.setdefault(peer, {})[key] = Version(counter, node)

    # --- reads -------------------------------------------------------------------------

    def latest(self, key: str) -> Entry | None:
        """The newest version accepted for ``key``, committed or not."""
        return self.pending.get(key) or self.index.get(key)

    def latest_version(self, key: str) -> Version:
        entry = self.latest(key)
        return entry.version if entry is not None else NO_VERSION

    def cached(self, key: str) -> Any:
        """The committed value of a live key from memory, or MISSING."""
        return self.cache.get(key)

    async def read(self, key: str) -> tuple[Any, Version] | None:
        """The committed value and version of ``key`` from SQLite, or None if absent or deleted.

        Runs on its own connection, so it never queues behind a commit's fsync.
        """
        async with self._reader.execute(
            "SELECT value, counter, node, deleted FROM kv WHERE key = ?", (key,)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None or row[3]:
            return None
        value = msgpack.unpackb(row[0], raw=False, strict_map_key=False)
        version = Version(row[1], row[2])
        # The reader may see a commit the event loop has not yet recorded, or
        # race a newer one; cache only what matches the index exactly.
        entry = self.index.get(key)
        if entry is not None and entry.version == version:
            self.cache.put(key, value)
        return value, version

    # --- writes ------------------------------------------------------------------------

    def write(self, key: str, version: Version, value: Any, packed: bytes | None) -> asyncio.Future[bool]:
        """Store ``value`` (or, with ``packed`` None, a tombstone) at ``version``.

        The future resolves to True once the write is durable, or at once to
        False when a version at least as high is already held or pending.
        """
        future = self._loop.create_future()
        if self._closing:
            future.set_exception(StorageError("node is shutting down; write refused"))
            return future
        if version <= self.latest_version(key):
            waiting = self._pending_commits.get(key)
            if waiting is not None:
                # Equal or newer data is still being committed: "not applied"
                # may be said only once what supersedes it is durable.
                return then(waiting, lambda _: False)
            future.set_result(False)
            return future
        deleted = packed is None
        self.pending[key] = Entry(version, deleted)
        self._pending_commits[key] = future
        self._queue.append(_Write(key, version, deleted, value, packed, future))
        self._wakeup.set()
        return future

    # --- hints ------------------------------------------------------------------------

    def add_hint(self, peer: str, key: str, version: Version) -> None:
        """Remember durably, in the next commit, that ``peer`` must get ``key`` at ``version``."""
        held = self.hints.setdefault(peer, {}).get(key)
        if held is None or version > held:
            self.hints[peer][key] = version
            self._hint_rows.append((peer, key, version.counter, version.node))
            self._wakeup.set()

    def drop_hints(self, peer: str, delivered: dict[str, Version]) -> None:
        """``peer`` now holds each key at the version given; hints up to it are done."""
        hinted = self.hints.get(peer, {})
        for key, version in delivered.items():
            held = hinted.get(key)
            if held is not None and held <= version:
                del hinted[key]
                self._unhint_rows.append((peer, key, version.counter, version.node))
        if self._unhint_rows:
            self._wakeup.set()

    async def read_rows(self, keys: list[str]) -> list[tuple[str, Version, bool, Any]]:
        """The committed rows of ``keys`` as (key, version, deleted, value), absent keys left out."""
        marks = ",".join("?" * len(keys))
        async with self._reader.execute(
            f"SELECT key, counter, node, deleted, value FROM kv WHERE key IN ({marks})", keys
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            (key, Version(counter, node), bool(deleted), None if deleted else msgpack.unpackb(value, raw=False, strict_map_key=False))
            for key, counter, node, deleted, value in rows
        ]

    # --- group commit --------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue or self._hint_rows or self._unhint_rows:
                batch = self._queue[: self._max_batch_rows]
                del self._queue[: self._max_batch_rows]
                hint_rows, self._hint_rows = self._hint_rows, []
                unhint_rows, self._unhint_rows = self._unhint_rows, []
                await self._commit(batch, hint_rows, unhint_rows)
            if self._closing:
                return

    async def _commit(self, batch: list[_Write], hint_rows: list[tuple], unhint_rows: list[tuple]) -> None:
        rows = [(w.key, w.packed, w.version.counter, w.version.node, int(w.deleted)) for w in batch]
        try:
            # One hop to aiosqlite's thread for the whole transaction, not one
            # per statement: each hop is a thread hand-off (GUIDE section 4),
            # and hand-offs were 12% of a node's busy time in quorum PUTs. aiosqlite offers no public way to run a
            # function on its thread; setup.py pins the releases checked, and
            # every test that writes fails at once if one drops _execute.
            await self._writer._execute(_write_transaction, self._writer._conn, rows, hint_rows, unhint_rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # disk full, I/O error: refuse the writes, keep serving
            log.error("group commit of %d rows failed: %s", len(batch), exc)
            try:
                await self._writer.rollback()
            except Exception:  # the failed COMMIT may have rolled back already
                pass
            # Hint bookkeeping stays in memory and is tried again with the next commit.
            self._hint_rows[:0] = hint_rows
            self._unhint_rows[:0] = unhint_rows
            for write in batch:
                if self.pending.get(write.key, (None,))[0] == write.version:
                    del self.pending[write.key]
                    del self._pending_commits[write.key]
                if not write.future.done():
                    write.future.set_exception(StorageError(f"storage write failed: {exc}"))
            return
        self.commits += 1
        self.committed_rows += len(batch)
        for write in batch:
            key = write.key
            entry = Entry(write.version, write.deleted)
            if self.pending.get(key) == entry:
                del self.pending[key]
                del self._pending_commits[key]
            current = self.index.get(key)
            if current is None or write.version > current.version:
                self.index[key] = entry
                if write.deleted:
                    self.cache.discard(key)
                else:
                    self.cache.put(key, write.value)
            if not write.future.done():
                write.future.set_result(True)

    def hint_count(self, peer: str) -> int:
        return len(self.hints.get(peer, ()))

    @property
    def queued_writes(self) -> int:
        return len(self._queue) + len(self.pending)

    async def close(self) -> None:
        """Commit everything queued, then close both connections."""
        self._closing = True
        self._wakeup.set()
        await self._committer
        await self._reader.close()
        await self._writer.close()


async def _claim_for_node(db: aiosqlite.Connection, node_id: str, path: Path) -> None:
    """Tie the data directory to one node id: version tags name their writer,
    so two nodes sharing files, or one restarted under a new id, would mint
    colliding or misleading tags."""
    async with db.execute("SELECT value FROM meta WHERE name = 'node_id'") as cursor:
        row = await cursor.fetchone()
    if row is None:
        await db.execute("INSERT INTO meta (name, value) VALUES ('node_id', ?)", (node_id,))
    elif row[0] != node_id:
        raise DataDirError(f"{path} belongs to node {row[0]!r}, not {node_id!r}; use that node id or another --data-dir")



def _write_transaction(db: sqlite3.Connection, rows: list[tuple], hint_rows: list[tuple], unhint_rows: list[tuple]) -> None:
    """One group commit, on SQLite's thread."""
    if rows:
        db.executemany(UPSERT, rows)
    if hint_rows:
        db.executemany(HINT_UPSERT, hint_rows)
    if unhint_rows:
        db.executemany(HINT_DELETE, unhint_rows)
    db.commit()

