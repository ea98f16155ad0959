"""Durable storage: SQLite in WAL mode through aiosqlite, with group commit, behind a narrow interface.

SQLite holds every key's value (msgpack bytes) or tombstone, with its version
tag, and the hints; it is the only durable state. What the node holds in
memory (every key's tag, pending writes, the value cache) belongs to the node
core (``kvwire.server.core``); storage only makes rows durable and reads them.

``write`` hands out a future per row that nobody else holds, so no caller can
cancel another's. Whatever arrives while a transaction is committing goes
into the next transaction together; each future resolves once its
transaction has committed with the configured ``PRAGMA synchronous``.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import math
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import aiosqlite

from ..protocol.errors import InternalServerError, KvwireError
from ..protocol.messages import Version
from ..protocol.values import pack_value, stored_value, structure_error
from .config import SyncMode
from .core.applied import MAX_AGE as REQUEST_MAX_AGE
from .core.keydir import Entry, mark_holds
from .core.mending import DamagedValueError
from .core.minter import minter_name
from .tally import BATCH_BOUNDS, COMMIT_BOUNDS, Buckets

# The node's database in its data directory (with SQLite's -wal and -shm beside it).
DATABASE_FILE_NAME = "kvwire.sqlite3"
log = logging.getLogger("kvwire.storage")

# A group commit this slow is logged: every write in it, and every quorum write
# waiting on this node's acknowledgement, waited that long. Half the default
# --write-timeout: two in a row and a write through this node answers NO_QUORUM.
# (A loop of fdatasyncs on this project's machine saw 201 ms at worst in 40 s.)
SLOW_COMMIT_SECONDS = 0.5

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
CREATE TABLE IF NOT EXISTS request_log (
    request TEXT NOT NULL,
    key TEXT NOT NULL,
    counter INTEGER NOT NULL,
    node TEXT NOT NULL,
    at REAL NOT NULL,
    tentative INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS request_log_at ON request_log (at);
CREATE TABLE IF NOT EXISTS stranded (
    key TEXT PRIMARY KEY,
    counter INTEGER NOT NULL,
    node TEXT NOT NULL
) WITHOUT ROWID;
"""
# The request log is appended to, never updated: its rows go in rowid order and
# its index in time order, so a commit writes to the last pages of each. Keyed
# by its random request ids (the table before 2026-12-05: ``requests``, an upsert
# on (request, key)), each insert landed on a random page of a tree of a
# minute's PUTs: at REST's 2,500 PUTs/s a commit wrote about a page per row
# into the WAL; appended, REST PUTs ran 1.26x as fast in paired runs
# (bench/results/2026-12-05/request_log_ab.md). A name written twice (a newer
# tag, a firm record of a tentative one) has two rows; loading keeps the one
# the upsert kept (``_newest_requests``).
OLD_REQUESTS_TABLE = "requests"
MIGRATE_REQUESTS = """
INSERT INTO request_log (request, key, counter, node, at, tentative)
    SELECT request, key, counter, node, at, tentative FROM requests ORDER BY at
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
# Keys a write left undecided here (core/effects.py, Strand), and at which tag.
STRAND_UPSERT = """
INSERT INTO stranded (key, counter, node) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET counter = excluded.counter, node = excluded.node
WHERE (excluded.counter, excluded.node) > (stranded.counter, stranded.node)
"""
HINT_DELETE_PEER = "DELETE FROM hints WHERE peer = ?"
# The PUT request ids applied here (core/applied.py), kept with their rows so that
# a retry finds them after a restart too. ``at`` is the request log's own clock
# (``Storage._log_now``), used only to expire them after ``applied.MAX_AGE``.
REQUEST_INSERT = "INSERT INTO request_log (request, key, counter, node, at, tentative) VALUES (?, ?, ?, ?, ?, ?)"
REQUEST_EXPIRE = "DELETE FROM request_log WHERE at < ?"
# Seconds between deletions of expired request ids (one indexed DELETE in a commit).
REQUEST_EXPIRE_INTERVAL = 10.0
# Tombstone garbage collection: only if the row is still that tombstone.
PURGE = "DELETE FROM kv WHERE key = ? AND counter = ? AND node = ? AND deleted = 1"
# A damaged value rewritten with a peer's copy of its version, only if the row is still that version.
MEND = "UPDATE kv SET value = ? WHERE key = ? AND counter = ? AND node = ? AND deleted = 0"
FLOOR_SAVE = "INSERT OR REPLACE INTO meta (name, value) VALUES ('tag_floor', ?)"
META_SET = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"
TABLE_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
# meta rows kvwire backup writes too (kvwire.server.backup): the data directory
# joins the cluster until it has caught up, and when the backup it is was taken.
JOINING = "joining"
# A file a node leaves in its data directory when it stops because its database
# files were lost under it (kvwire.server.app): the next start joins, as --join makes
# it, whatever it finds there.
REJOIN_FILE_NAME = "REJOIN"
# Set when a node has caught up from every peer (joined), kept from then on: --join
# on such a directory is not needed, and is ignored.
JOINED = "joined"
BACKUP_TAKEN_AT = "backup_taken_at"
# The incarnation this node mints tags under (core/minter.py), while it has one.
INCARNATION = "incarnation"


# Seconds between probe commits while the storage refuses writes.
PROBE_INTERVAL = 1.0


class _Write(NamedTuple):
    key: str
    version: Version
    deleted: bool
    packed: bytes | None  # what SQLite stores; None for a tombstone
    future: asyncio.Future
    request: str | None  # the PUT's request id, kept in ``requests``
    tentative: bool  # that record is tentative (core/applied.py)


class StorageError(InternalServerError):
    """The disk refused a write; the client is told, and nothing is acknowledged."""


class DataDirError(KvwireError):
    """The data directory cannot be used by this node (raised at start-up, never sent)."""


class DataDirUnavailableError(DataDirError):
    """The data directory cannot be used now, for a reason that may pass by itself (its
    disk full, an I/O error): the node exits 1, to be restarted, not 78."""


class DataDirLostError(DataDirUnavailableError):
    """The node's database file or write-ahead log was deleted or replaced while it
    ran (Storage.check_file): it stopped, leaving REJOIN in its data directory so
    that its next start catches up first, and exits 1 so that whatever supervises it
    starts it again."""


# SQLite's primary result codes (sqlite_errorcode & 0xff) for a disk that may recover.
_SQLITE_IOERR, _SQLITE_FULL = 10, 13
_PASSING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


# SQLite's structural check of every page, its problems listed up to ten.
QUICK_CHECK = "PRAGMA quick_check(10)"


def first_damage(problems: list[str]) -> str | None:
    """The first of QUICK_CHECK's problems, in one line; None if it found the file whole."""
    if problems == ["ok"]:
        return None
    return problems[0].removeprefix("*** in database main ***\n").splitlines()[0]


class _DamagedRow(Exception):
    """A row kvwire could not have written (a NULL tag, a name that is a number)."""


# Bytes of values in one group commit at most (``_batch_length``): at this machine's
# slowest measured write speed, about 50 MB/s with an fsync, under a second, far
# within the default --disk-stall-timeout. 1 MB PUTs at 50 connections measured no
# difference against no cap (bench/results/2026-12-07/batch_bytes_ab.md).
MAX_BATCH_BYTES = 32 * 1024 * 1024

# What a damaged file raises besides sqlite3's errors: rows that fail the load's
# checks, and text that is not UTF-8 (the sqlite3 module decodes some itself).
_DAMAGE = (_DamagedRow, UnicodeDecodeError)


def mark_for_rejoin(data_dir: Path, reason: str) -> Path:
    """Leave REJOIN in ``data_dir`` (made if gone), durably: the next start joins."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker = data_dir / REJOIN_FILE_NAME
    marker.write_text(f"{reason}\n")
    fsync_path(marker)
    fsync_path(data_dir)
    return marker


def fsync_path(path: Path) -> None:
    """Make a file's contents, or a directory's entries, durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        return  # a directory one may write in but not read (mode 0333) cannot be opened to sync
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wal_path(database: Path) -> Path:
    """SQLite's write-ahead log beside ``database``."""
    return database.with_name(database.name + "-wal")


def _file_identity(path: Path, *, strict: bool = False) -> tuple[int, int] | None:
    """The file's (device, inode); None if it cannot be read, unless ``strict``."""
    try:
        status = os.stat(path)
    except OSError:
        if strict:
            raise
        return None
    return status.st_dev, status.st_ino


class Storage:
    # Slots (the connection's comment, kvwire/server/connection.py): past 30 attributes
    # an instance __dict__ has no shared keys in CPython 3.11, and attribute reads slow down.
    __slots__ = (
        "_clear_joining", "_closing", "_commit_since", "_committer", "_damaged_keys", "_failed_since_refusing",
        "_floor", "_stalled",
        "_floor_waiters", "_hint_rows", "_identities", "_log_clock_offset", "_loop", "_max_batch_rows",
        "_mend_rows", "_purge_rows", "_queue", "_reader", "_request_rows", "_requests_expired_at",
        "_strand_rows", "_unhint_rows", "_wakeup", "_writer", "backup_taken_at", "batch_rows", "commit_seconds",
        "commits", "committed_rows", "failed_commits", "file_lost", "incarnation", "joining", "loaded_entries",
        "loaded_floor", "loaded_hints", "loaded_requests", "loaded_stranded", "path", "unclean", "write_error",
    )

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, max_batch_rows: int,
                 path: Path) -> None:
        self._loop = asyncio.get_running_loop()
        self.path = path
        self._writer = writer
        self._reader = reader
        self._max_batch_rows = max_batch_rows
        self._queue: list[_Write] = []
        self._hint_rows: list[tuple[str, str, int, str]] = []
        self._unhint_rows: list[tuple[str, str, int, str]] = []
        self._purge_rows: list[tuple[str, int, str]] = []
        # Per key, MEND's row and the peer it came from, for the next commit.
        self._mend_rows: dict[str, tuple[tuple[bytes, str, int, str], str]] = {}
        # A tag floor to write in the next commit, and who waits for it.
        self._floor: int | None = None
        self._floor_waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._committer = asyncio.create_task(self._commit_forever(), name="kvwire-group-commit")
        self.commits = 0
        self.committed_rows = 0
        self.failed_commits = 0
        # Why the last commit failed, while no commit has succeeded since: the node
        # then reports itself unable to take writes (HEALTH) until one does. A probe
        # commit every PROBE_INTERVAL finds out when the disk takes writes again,
        # even when no client writes.
        self.write_error: str | None = None
        # The database file and its write-ahead log as opened: either deleted or
        # replaced under the running node makes it refuse writes for good
        # (``check_file``). The log exists from the open on (journal_mode=WAL, then
        # a write), and SQLite removes it only when its last connection closes.
        self._identities = {file: _file_identity(file) for file in (path, wal_path(path))}
        self.file_lost: str | None = None
        self._damaged_keys: set[str] = set()  # values found damaged, logged once each
        self._failed_since_refusing = 0  # group commits failed since write_error was set
        # When the group commit now on SQLite's thread began (time.perf_counter), and
        # whether it has been declared stalled (``check_stall``); None and False between commits.
        self._commit_since: float | None = None
        self._stalled = False
        self.batch_rows = Buckets(BATCH_BOUNDS)
        self.commit_seconds = Buckets(COMMIT_BOUNDS)
        # What the files held when opened, for the node core to start from.
        self.loaded_entries: dict[str, Entry] = {}
        self.loaded_hints: dict[str, dict[str, Version]] = {}
        self.loaded_floor = 0
        # (request id, key, version, seconds ago, tentative) of recently applied PUTs.
        self.loaded_requests: list[tuple[str, str, Version, float, bool]] = []
        # (key, version) of each stranded mark whose key's row has not passed it.
        self.loaded_stranded: list[tuple[str, Version]] = []
        self._requests_expired_at = 0.0
        # The request log's clock: seconds of this node's running time, carried on from
        # the last record written at each start (``_load``). Not the wall clock: a step
        # of it (NTP at boot, an operator's date) aged every record at once, which then
        # expired on disk and, after a restart, let a retried PUT apply twice,
        # overwriting a later acknowledged write. Time a node is down does not count:
        # its records are kept for the rest of their minute after it starts again.
        self._log_clock_offset = time.time() - time.monotonic()
        # Joining the cluster (``open(join=)``) and not yet caught up.
        self.joining = False
        # The last run ended without ``close(clean=True)``: killed, or it lost power.
        self.unclean = False
        # Part of the name this node mints tags under (core/minter.py); '' for none.
        self.incarnation = ""
        # When the backup this data directory was restored from was taken (``kvwire
        # backup``, kvwire.server.backup), until the node has joined; else None.
        self.backup_taken_at: float | None = None
        self._clear_joining = False
        # Request records copied from peers while joining (``save_requests``), for the next commit.
        self._request_rows: list[tuple] = []
        self._strand_rows: list[tuple] = []

    @classmethod
    async def open(cls, data_dir: Path, *, node_id: str, sync: SyncMode, max_batch_rows: int = 4096,
                   join: bool = False, cluster_id: str = "kvwire") -> Storage:
        """Open (creating if need be) the node's files. ``join``: a new data directory
        joins an existing cluster (``ServerConfig.join``), a state kept in the files
        until the node has caught up, so that a restart meanwhile does not end it."""
        path = data_dir / DATABASE_FILE_NAME
        checked = False
        if _holds_a_wal(path):
            # Checked before a writer opens it: on damage the writer's close checkpointed
            # the WAL into the file and deleted it, and a file put back from a backup over a
            # killed node's -wal (a lifecycle probe did) was spoilt by the old WAL's pages,
            # which were then gone too. A read-only connection leaves both as they are.
            checked, damage = await asyncio.to_thread(_quick_check_read_only, path)
            if damage is not None:
                raise _refusal(path, _DamagedRow(f"SQLite's quick_check finds it damaged ({damage})"), wal=True)
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # owner-only (datadir.py)
            # sqlite3's default transaction handling opens a transaction before the
            # first INSERT by itself, which saves a BEGIN round trip to aiosqlite's
            # thread (about 25 us each, docs/design.md "Storage") on every group commit.
            writer = await aiosqlite.connect(path)
        except (OSError, sqlite3.Error) as exc:
            raise _refusal(path, exc) from None
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            # Before anything is written: damage in a page the load does not read (an
            # index, a value's overflow page) was met only by the request that reached
            # it. quick_check reads every page's structure (0.2 s a million keys, warm).
            if not checked:
                async with writer.execute(QUICK_CHECK) as cursor:
                    damage = first_damage([row[0] for row in await cursor.fetchall()])
                if damage is not None:
                    raise _DamagedRow(f"SQLite's quick_check finds it damaged ({damage})")
            # The opening transaction is durable whatever --sync says: its 'running'
            # mark and incarnation must outlive a power cut, or the next start could
            # take itself for a clean one and mint under an old name (core/minter.py).
            await writer.execute("PRAGMA synchronous=FULL")
            await writer.executescript(SCHEMA)
            await _migrate_requests(writer)
            fresh = await _claim_for_node(writer, node_id, cluster_id, path)
            rejoin = (data_dir / REJOIN_FILE_NAME).exists()
            if rejoin:
                # Left by this node's last run, which found its files lost under it
                # (check_file): whatever this database holds, the writes it acknowledged
                # may not all be here, so it catches up from every peer before it votes,
                # with --join or without, joined before or not.
                log.warning("joining again: %s says this node's files were lost while it last ran; catching up "
                            "from every peer before it votes", data_dir / REJOIN_FILE_NAME,
                            extra={"event": "rejoin_after_lost_files"})
                await writer.execute(META_SET, (JOINING, "1"))
            elif join:
                async with writer.execute("SELECT name FROM meta WHERE name IN (?, ?)", (JOINED, JOINING)) as cursor:
                    marks = {row[0] for row in await cursor.fetchall()}
                if JOINING in marks:
                    pass  # joining already (a restored backup, say, or a restart meanwhile): --join changes nothing
                elif JOINED in marks:
                    # Caught up from every peer since it was new: --join left in a unit
                    # file or compose file after a replacement must not make every
                    # restart wait for every peer.
                    log.info("--join ignored: %s has joined its cluster already; it is needed only on a new "
                             "or emptied data directory", path, extra={"event": "join_not_needed"})
                else:
                    if not fresh:
                        # Started once without --join after its disk was lost, then with it:
                        # ignored, the node would vote with what it lacks.
                        log.warning("--join on %s, a data directory this node has used but never joined with: "
                                    "joining now, catching up from every peer before it votes; --join may stay: it "
                                    "is ignored once this node has joined", path, extra={"event": "join_used_directory"})
                    await writer.execute(META_SET, (JOINING, "1"))
            # Present from here until a clean close: found at open, the last run
            # was killed (or lost power) and may have sent tags it never committed.
            async with writer.execute("SELECT value FROM meta WHERE name = 'running'") as cursor:
                unclean = await cursor.fetchone() is not None
            await writer.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('running', '1')")
            incarnation = await _incarnation_for_this_start(writer, unclean, node_id)
            await writer.commit()
            # Into the database file itself, not only the WAL: a WAL lost while the node
            # is down (deleted, truncated, its header overwritten) takes the database back
            # to its last checkpoint, and without the mark there that was the last clean
            # stop: the node started as after it, under its old name, and minted again
            # tags its peers held with other values (lost writes, found by an independent check).
            await writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if rejoin:
                (data_dir / REJOIN_FILE_NAME).unlink(missing_ok=True)  # the joining mark, durable, says it now
            await writer.execute(f"PRAGMA synchronous={sync.value.upper()}")
            reader = await aiosqlite.connect(path, isolation_level=None)
        except BaseException as exc:
            await writer.close()
            if isinstance(exc, (OSError, sqlite3.Error, *_DAMAGE)):
                raise _refusal(path, exc) from None
            raise
        storage = cls(writer, reader, max_batch_rows, path)
        storage.unclean = unclean
        storage.incarnation = incarnation
        try:
            await storage._load()
        except BaseException as exc:
            # A file damaged past its header, or a kv table of another shape, fails
            # only here. aiosqlite's threads must be closed, or the interpreter waits
            # for them at exit: the node hung, holding its data directory's lock.
            # Not a clean close: the 'running' mark stays, and the next start that
            # gets this far catches up first.
            await storage.close(clean=False)
            if isinstance(exc, (OSError, sqlite3.Error, *_DAMAGE)):
                raise _refusal(path, exc) from None
            raise
        entries = storage.loaded_entries
        tombstones = sum(entry.deleted for entry in entries.values())
        # Counted as kvwire backup counts them: live keys, then tombstones.
        log.info("opened %s: %d keys and %d tombstones, sync=%s", path, len(entries) - tombstones, tombstones,
                 sync.value)
        return storage

    async def _load(self) -> None:
        names: dict[str, str] = {}  # one str object per writer, not one per key (keydir.py)
        async with self._reader.execute("SELECT key, counter, node, deleted FROM kv") as cursor:
            while rows := await cursor.fetchmany(10_000):
                for key, counter, node, deleted in rows:
                    # A damaged file can hold what kvwire never writes (a NULL counter, a number
                    # for a name), which would fail far from here: in the core, at the first
                    # comparison of tags. The check costs about 20 ms a million rows.
                    if (type(counter) is not int or type(node) is not str or type(key) is not str or counter < 0
                            or deleted not in (0, 1)):
                        raise _DamagedRow(f"a row of its kv table is damaged (key {key!r:.80}: counter {counter!r:.40}, "
                                          f"node {node!r:.40}, deleted {deleted!r:.10}, not as kvwire writes them)")
                    self.loaded_entries[key] = Entry(Version(counter, names.setdefault(node, node)), bool(deleted))
        async with self._reader.execute("SELECT peer, key, counter, node FROM hints") as cursor:
            while rows := await cursor.fetchmany(10_000):
                for peer, key, counter, node in rows:
                    if type(counter) is not int or type(node) is not str or type(peer) is not str or type(key) is not str:
                        raise _DamagedRow(f"a row of its hints table is damaged (peer {peer!r:.40}, key {key!r:.80}: "
                                          f"counter {counter!r:.40}, node {node!r:.40})")
                    self.loaded_hints.setdefault(peer, {})[key] = Version(counter, node)
        async with self._reader.execute("SELECT name, value FROM meta") as cursor:
            meta = dict(await cursor.fetchall())
        try:
            self.loaded_floor = int(meta.get("tag_floor", 0))
        except (TypeError, ValueError):
            raise _DamagedRow(f"its tag floor is damaged ({meta.get('tag_floor')!r:.40})") from None
        # Every row, then the age: a record the upsert would have kept, grown too
        # old, must not give way to a later row it had refused (a lower tag, or
        # its own tag tentative), which it did not keep. The log holds at most
        # a minute and an expiry interval of PUTs.
        async with self._reader.execute("SELECT request, key, counter, node, at, tentative FROM request_log "
                                        "ORDER BY rowid") as cursor:
            rows = await cursor.fetchall()
        for request, key, counter, node, at, tentative in rows:
            if (type(request) is not str or type(key) is not str or type(counter) is not int or counter < 0
                    or type(node) is not str or type(at) not in (int, float) or not math.isfinite(at)
                    or tentative not in (0, 1)):
                raise _DamagedRow(f"a row of its request log is damaged (request {request!r:.80}, key {key!r:.80}: "
                                  f"counter {counter!r:.40}, node {node!r:.40}, at {at!r:.40}, "
                                  f"tentative {tentative!r:.40})")
        if rows:
            # The clock carries on from the last record written (appended: the highest
            # rowid), not from the highest time: a record an older kvwire stamped with a
            # wall clock then ahead would set it days forward, aging every other at once.
            origin = rows[-1][4]
            self._log_clock_offset = origin - time.monotonic()
            if any(row[4] > origin for row in rows):
                # Such a record counts as written now, on disk too, or it would outlive
                # its minute until the log's clock reached its time.
                await self._writer.execute("UPDATE request_log SET at = ? WHERE at > ?", (origin, origin))
                await self._writer.commit()
                rows = [(*row[:4], min(row[4], origin), row[5]) for row in rows]
        now = self._log_now()
        newest = sorted(_newest_requests(rows).items(), key=lambda record: record[1][1])  # oldest first, as remembered
        self.loaded_requests = [(request, key, version, max(0.0, now - at), tentative)
                                for (request, key), (version, at, tentative) in newest if at >= now - REQUEST_MAX_AGE]
        async with self._reader.execute("SELECT key, counter, node FROM stranded") as cursor:
            marks = await cursor.fetchall()
        passed = []
        for key, counter, node in marks:
            if type(key) is not str or type(counter) is not int or counter < 0 or type(node) is not str:
                raise _DamagedRow(f"a row of its stranded table is damaged (key {key!r:.80}: counter {counter!r:.40}, "
                                  f"node {node!r:.40})")
            if mark_holds(self.loaded_entries.get(key), mark := Version(counter, node)):
                self.loaded_stranded.append((key, mark))
            else:
                passed.append((key,))
        if passed:
            await self._writer.executemany("DELETE FROM stranded WHERE key = ?", passed)
            await self._writer.commit()
        self.joining = JOINING in meta
        try:
            self.backup_taken_at = float(meta[BACKUP_TAKEN_AT]) if BACKUP_TAKEN_AT in meta else None
        except ValueError:  # not written by kvwire backup: no age to warn about
            self.backup_taken_at = None

    # --- reads -------------------------------------------------------------------------

    async def read(self, key: str) -> tuple[Version, bool, Any] | None:
        """The committed row of ``key`` as (version, deleted, value), or None if it has none."""
        return (await self.read_many([key]))[key]

    async def read_many(self, keys: list[str]) -> dict[str, tuple[Version, bool, Any] | None]:
        """The committed rows of ``keys``, each as ``read`` gives it.

        One hop to the reader's thread for them all (a hop costs about 25 us,
        more than a point SELECT), on its own connection, so reads never queue
        behind a commit's fsync.
        """
        rows = await self._reader._execute(_read_rows, self._reader._conn, keys)
        return {key: None if row is None else self._damaged(key, row) if type(row) is _Damaged else
                (Version(row[1], row[2]), bool(row[3]),
                 None if row[3] else stored_value(row[0]))
                for key, row in zip(keys, rows)}

    def _damaged(self, key: str, damaged: _Damaged) -> DamagedValueError:
        """The error for a value this node's file holds damaged: UNAVAILABLE, so that a
        client reads another node's copy, and the node mends it from a peer's
        (core/mending.py). Logged once a key (a client may read it again and again),
        for the first thousand keys."""
        version = Version(damaged.counter, damaged.node)
        if key not in self._damaged_keys and len(self._damaged_keys) < 1000:
            self._damaged_keys.add(key)
            log.error("the value of %r in %s is damaged: %s; this node refuses reads of it (UNAVAILABLE), and mends "
                      "it with a peer's copy of its version %s where a peer has one", key, self.path, damaged.reason,
                      tuple(version), extra={"event": "damaged_value", "key": key})
        return DamagedValueError(f"this node's copy of {key!r} is damaged on its disk ({damaged.reason}); read it "
                                 "through another node (this one mends it from a peer's copy)", key=key, version=version)

    async def scrub_page(self, after: str | None, max_keys: int, max_bytes: int) -> ScrubPage:
        """The live rows after key ``after`` (from the first without), in key order, read and
        checked as ``read`` checks a value, until ``max_keys`` rows or ``max_bytes`` of values
        (at least one row): one hop to the reader's thread, as ``read_many``."""
        checked, size, last, damaged, ended = await self._reader._execute(_scrub_rows, self._reader._conn, after,
                                                                         max_keys, max_bytes)
        return ScrubPage(checked, size, last, [self._damaged(key, row) for key, row in damaged], ended)

    async def key_after(self, after: str | None) -> str | None:
        """The first key (a tombstone's too) after ``after``, read without its value: where a
        scrub goes on past a row whose value cannot be read at all. None past the last."""
        return await self._reader._execute(_key_after, self._reader._conn, after)

    def mend(self, key: str, version: Version, value: Any, peer: str) -> None:
        """Rewrite, in the next commit, ``key``'s damaged value with ``peer``'s copy of
        it, if the row is still ``version`` (a write since replaced it otherwise)."""
        self._mend_rows[key] = ((pack_value(value), key, version.counter, version.node), peer)  # one a key
        self._wakeup.set()

    # --- writes ------------------------------------------------------------------------

    def write(self, key: str, version: Version, deleted: bool, value: Any, packed: bytes | None,
              request: str | None = None, tentative: bool = False) -> asyncio.Future[None]:
        """Commit the row durably (with the PUT's request id, if given); the future
        resolves once it has (or fails with StorageError).

        The SQL keeps a row only if its tag is higher than the one stored, so
        a replay is harmless.
        """
        future = self._loop.create_future()
        if self._closing:
            future.set_exception(StorageError("node is shutting down; write refused"))
            return future
        if not deleted and packed is None:
            packed = pack_value(value)
        self._queue.append(_Write(key, version, deleted, None if deleted else packed, future, request, tentative))
        self._wakeup.set()
        return future

    def add_hint(self, peer: str, key: str, version: Version) -> None:
        """Remember durably, in the next commit, that ``peer`` must get ``key`` at ``version``."""
        self._hint_rows.append((peer, key, version.counter, version.node))
        self._wakeup.set()

    def drop_hint(self, peer: str, key: str, version: Version) -> None:
        """Forget, in the next commit, ``peer``'s hint for ``key`` up to ``version``."""
        self._unhint_rows.append((peer, key, version.counter, version.node))
        self._wakeup.set()

    def purge(self, key: str, version: Version) -> None:
        """Delete, in the next commit, ``key``'s row if it is still the tombstone ``version``."""
        self._purge_rows.append((key, version.counter, version.node))
        self._wakeup.set()

    def save_floor(self, floor: int) -> asyncio.Future[None]:
        """Write the tag floor in the next commit; the future resolves once it is durable."""
        future = self._loop.create_future()
        self._floor = floor if self._floor is None else max(self._floor, floor)
        self._floor_waiters.append(future)
        self._wakeup.set()
        return future

    def clear_joining(self) -> None:
        """Record, in the next commit, that the node has joined."""
        self._clear_joining = True
        self._wakeup.set()

    def _log_now(self) -> float:
        """The request log's clock (``_log_clock_offset`` says why not the wall clock)."""
        return self._log_clock_offset + time.monotonic()

    def save_requests(self, records: list) -> None:
        """Keep, in the next commit, these ``(request, key, version, tentative)``
        records of PUTs applied elsewhere (copied from a peer while joining), as
        ``write`` keeps a row's own."""
        now = self._log_now()
        self._request_rows.extend((request, key, version.counter, version.node, now, int(tentative))
                                  for request, key, version, tentative in records)
        self._wakeup.set()

    def strand(self, key: str, version: Version) -> None:
        """Mark, in the next commit, ``key``'s copy at ``version`` as from a write left undecided."""
        self._strand_rows.append((key, version.counter, version.node))
        self._wakeup.set()

    def drop_peer_hints(self, peer: str) -> None:
        """Forget, in the next commit, every hint for ``peer`` (those still queued too:
        the commit deletes a peer's hints before it adds any, so a hint added
        after this call survives it)."""
        self._hint_rows = [row for row in self._hint_rows if row[0] != peer]
        self._unhint_rows = [row for row in self._unhint_rows if row[0] != peer]
        self._unhint_rows.append((peer, None, None, None))
        self._wakeup.set()

    # --- group commit --------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        while True:
            if self.write_error is None:
                await self._wakeup.wait()
            else:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), PROBE_INTERVAL)
                except TimeoutError:
                    await self._probe()
                    continue
            self._wakeup.clear()
            while (self._queue or self._hint_rows or self._unhint_rows or self._purge_rows or self._floor is not None
                   or self._clear_joining or self._request_rows or self._strand_rows or self._mend_rows):
                count = self._batch_length()
                batch = self._queue[:count]
                del self._queue[:count]
                await self._commit(batch)
                if self.write_error is not None and not self._queue:
                    break  # only bookkeeping left, put back: the probe says when to try again
            if self._closing:
                return

    def _batch_length(self) -> int:
        """Writes in the next group commit: up to ``max_batch_rows``, and values of up to
        MAX_BATCH_BYTES in all (at least one write). A commit's time grows with its bytes:
        4,096 values of 100 KB took 8.2 s to commit on a healthy disk (a review), which
        --disk-stall-timeout took for a stalled disk, on every replica at once."""
        queue, limit = self._queue, min(len(self._queue), self._max_batch_rows)
        count = size = 0
        while count < limit:
            packed = queue[count].packed
            count += 1
            if packed is not None:
                size += len(packed)
                if size >= MAX_BATCH_BYTES:
                    break
        return count

    async def _commit(self, batch: list[_Write]) -> None:
        rows = [(w.key, w.packed, w.version.counter, w.version.node, int(w.deleted)) for w in batch]
        now = self._log_now()
        copied_requests, self._request_rows = self._request_rows, []
        requests = [(w.request, w.key, w.version.counter, w.version.node, now, int(w.tentative))
                    for w in batch if w.request is not None] + copied_requests
        expire_before = None
        if now - self._requests_expired_at >= REQUEST_EXPIRE_INTERVAL:
            self._requests_expired_at = now
            expire_before = now - REQUEST_MAX_AGE
        hint_rows, self._hint_rows = self._hint_rows, []
        unhint_rows, self._unhint_rows = self._unhint_rows, []
        purge_rows, self._purge_rows = self._purge_rows, []
        floor, self._floor = self._floor, None
        floor_waiters, self._floor_waiters = self._floor_waiters, []
        joined, self._clear_joining = self._clear_joining, False
        strand_rows, self._strand_rows = self._strand_rows, []
        mends, self._mend_rows = list(self._mend_rows.values()), {}
        upkeep = _Upkeep(hint_rows, unhint_rows, purge_rows, floor, joined, requests, expire_before, strand_rows,
                         [row for row, _peer in mends])
        started = time.perf_counter()
        try:
            if self.file_lost is not None:
                raise StorageError(self.file_lost)
            # One hop to aiosqlite's thread for the whole transaction, not one
            # per statement: each hop is a thread hand-off (about 25 us), and
            # hand-offs were 12% of a node's busy time in quorum PUTs.
            # aiosqlite offers no public way to run a function on its thread
            # (README "Storage" says why we use this one); setup.py pins the
            # releases checked, and every test that writes fails at once if
            # one drops _execute.
            self._commit_since = started
            mended = await self._writer._execute(_write_transaction, self._writer._conn, rows, upkeep)
        except asyncio.CancelledError:
            self._commit_done()
            raise
        except Exception as exc:  # disk full, I/O error: refuse the writes, keep serving
            self.failed_commits += 1
            # A commit declared stalled from a node taking writes that then fails is the first
            # failure, not "another reason" (none failed since: check_stall reset the count).
            stalled_for = self._commit_done()
            if self.write_error is None or (stalled_for is not None and not self._failed_since_refusing):
                self._failed_since_refusing = 0
                log.error("storage refuses writes: group commit of %d rows to %s failed: %s; this node reports "
                          "itself unable to take writes until a commit succeeds", len(batch), self.path, exc,
                          extra={"event": "storage_write_failed", "writes": len(batch)})
            elif stalled_for is not None:
                self._stalled_commit_failed(f"group commit of {len(batch)} rows", stalled_for, exc)
            elif str(exc) != self.write_error:
                log.error("group commit of %d rows failed, for another reason now: %s", len(batch), exc,
                          extra={"event": "storage_write_failed", "writes": len(batch)})
            # Else not logged: every client write makes a commit, and a full disk failed
            # some 250 a second under one client (the line above said it already, and
            # the one at recovery counts them).
            self._failed_since_refusing += 1
            # Once the file is lost no probe runs: that stays the reason, or HEALTH would name
            # this failure for good.
            self.write_error = self.file_lost if self.file_lost is not None else str(exc)
            try:
                await self._writer.rollback()
            except Exception:  # the failed COMMIT may have rolled back already
                pass
            # Hint bookkeeping, purges and the floor are tried again with the next commit.
            self._hint_rows = _ahead_of(hint_rows, self._hint_rows)
            self._unhint_rows = _ahead_of(unhint_rows, self._unhint_rows)
            self._purge_rows = _ahead_of(purge_rows, self._purge_rows)
            if floor is not None:
                self._floor = floor if self._floor is None else max(self._floor, floor)
                self._floor_waiters = _ahead_of(floor_waiters, self._floor_waiters)
            self._clear_joining = self._clear_joining or joined
            self._request_rows = _ahead_of(copied_requests, self._request_rows)
            self._strand_rows = _ahead_of(strand_rows, self._strand_rows)
            for row, peer in mends:
                self._mend_rows.setdefault(row[1], (row, peer))  # one queued since is newer
            for write in batch:
                if not write.future.done():
                    write.future.set_exception(StorageError(f"storage write failed: {exc}"))
            return
        self._writes_work_again(self._commit_done())
        seconds = time.perf_counter() - started
        self.commit_seconds.observe(seconds)
        if seconds >= SLOW_COMMIT_SECONDS:
            log.warning("slow disk: a group commit to %s took %d ms, fsync included; the %d writes in it "
                        "waited that long", self.path, round(seconds * 1000), len(batch),
                        extra={"event": "slow_commit", "commit_ms": round(seconds * 1000), "writes": len(batch)})
        self.batch_rows.observe(len(rows) + len(hint_rows) + len(unhint_rows) + len(purge_rows))
        for waiter in floor_waiters:
            if not waiter.done():
                waiter.set_result(None)
        for ((_packed, key, counter, node), peer), applied in zip(mends, mended):
            if applied:
                self._damaged_keys.discard(key)  # damaged again later, it is logged again
                log.warning("mended the damaged value of %r in %s with peer %s's copy of its version %s", key,
                            self.path, peer, (counter, node),
                            extra={"event": "damaged_value_mended", "peer": peer, "key": key})
        self.commits += 1
        self.committed_rows += len(batch)
        for write in batch:
            if not write.future.done():
                write.future.set_result(None)

    async def _probe(self) -> None:
        """One small commit, to learn whether the disk takes writes again."""
        if self.file_lost is not None:
            return  # no commit tells: the file it would go to is not the data directory's
        try:
            self._commit_since = time.perf_counter()
            await self._writer._execute(_probe_transaction, self._writer._conn)
        except asyncio.CancelledError:
            self._commit_done()
            raise
        except Exception as exc:
            stalled_for = self._commit_done()
            if stalled_for is not None:  # a full disk that then hung: its stall ends, failing
                self._stalled_commit_failed("probe commit", stalled_for, exc)
            self.write_error = str(exc)
            try:
                await self._writer.rollback()
            except Exception:
                pass
            return
        self._writes_work_again(self._commit_done())

    def _stalled_commit_failed(self, what: str, stalled_for: float, exc: Exception) -> None:
        """A commit declared stalled while the node refused writes already returned, failing:
        the stall's line had said "until it finishes", and nothing said it did."""
        log.error("the %s to %s that stalled returned after %d ms, and failed: %s; this node still refuses writes",
                  what, self.path, round(stalled_for * 1000), exc,
                  extra={"event": "storage_write_failed", "commit_ms": round(stalled_for * 1000)})

    @property
    def stalled(self) -> bool:
        """A commit has run past the stall limit and not returned yet (``check_stall``)."""
        return self._stalled

    @property
    def commit_running_s(self) -> float | None:
        """How long the group commit now on SQLite's thread has run, fsync included; None between commits."""
        since = self._commit_since
        return None if since is None else time.perf_counter() - since

    def check_stall(self, limit: float, *, held: float = 0.0) -> None:
        """Refuse writes while a commit has run ``limit`` seconds or more: a disk that
        stops completing writes (a hung SAN or drive, a frozen file system) holds the
        commit, and every write this node coordinates waits on it until the client
        times out, while the node, its peers and its load balancer's checks all took
        it for healthy (a probe froze a node's file system: PUTs sent there timed out
        for as long as it lasted, PUTs to its peers went through, HEALTH said healthy).
        Refusing them as a failed commit is refused, PUTs and DELETEs go to another
        node at once, and its peers count it out of their majorities. The commit's
        return, failed or not, ends it (``_commit_done``). The node calls this every
        fraction of a second; ``held``: seconds its call was late, the whole process
        held (SIGSTOP, a paused VM), its commit with it: not the disk's doing, so not
        counted in the commit's time. A node refusing writes already (a failed commit)
        whose next commit or probe then hangs is declared stalled too: a full disk that
        then hangs queued its peers' REPLICATEs behind the probe, unanswered, as a stall
        did before it was refused."""
        if held and self._commit_since is not None:
            # Not past now: a commit begun during a busy (not held) late turn is not owed the rest.
            self._commit_since = min(self._commit_since + held, time.perf_counter())
        running = self.commit_running_s
        if running is None or running < limit or self._stalled:
            return
        earlier = self.write_error
        self._stalled = True
        if earlier is None:
            self._failed_since_refusing = 0  # else its count goes on: the stall is one more reason
        self.write_error = (f"a group commit to {self.path} has not finished after {running:.1f} s "
                            f"(--disk-stall-timeout {limit:g} s): the disk is not completing writes")
        if earlier is not None:
            self.write_error += f" (refusing writes already: {earlier})"
        log.error("storage refuses writes: %s; this node reports itself unable to take writes until it finishes",
                  self.write_error, extra={"event": "disk_stalled", "commit_ms": round(running * 1000)})

    def _commit_done(self) -> float | None:
        """The commit on SQLite's thread returned: how long it ran if it had been declared stalled, else None."""
        since, self._commit_since = self._commit_since, None
        if not self._stalled:
            return None
        self._stalled = False
        return 0.0 if since is None else time.perf_counter() - since

    def check_file(self) -> None:
        """Refuse writes for good once the database file or its write-ahead log is no
        longer the one opened (deleted, or replaced): commits would still succeed, into
        a file no start will open, and this node would acknowledge as durable, to its
        clients and its peers' majorities, what its next start has lost. A storage
        probe deleted the files under a node that went on reporting itself healthy
        through 10,222 writes; deleting the log alone loses every commit since the last
        checkpoint the same way. The node calls this every second."""
        if self.file_lost is not None:
            return
        for file, opened in self._identities.items():
            if opened is None:
                continue  # could not be read at the open: nothing to compare with
            try:
                identity = _file_identity(file, strict=True)
            except FileNotFoundError:
                what = "deleted, or its directory moved,"
            except OSError:
                continue  # cannot tell (a permission changed): commits say whether they work
            else:
                if identity == opened:
                    continue
                what = "replaced by another file"
            name = f"the database file {file}" if file == self.path else f"the database's write-ahead log {file}"
            self.file_lost = (f"{name} was {what} while this node ran: a commit would land in a file no start "
                              "on this path opens, so it takes no writes")
            log.error("storage refuses writes: %s", self.file_lost, extra={"event": "database_file_lost"})
            self.write_error = self.file_lost
            return

    def companions_of_the_lost_file(self) -> list[Path]:
        """The write-ahead log and its index at this database's path once the database
        file there is not the one opened (deleted, or another put in its place), and
        the log is the opened one's: SQLite would take them for the new file's. A
        reviewer replaced the file: SQLite's close neither checkpoints nor deletes the
        log of a database that moved, and the next start replayed the old pages into
        the new file ("database disk image is malformed", exit 78). A log put there
        with the new file is its own, and kept."""
        opened = self._identities[self.path]
        now = _file_identity(self.path)
        if now is not None and (opened is None or now == opened):
            return []  # the database opened is there (or cannot be told): its log is its own
        wal = wal_path(self.path)
        if now is not None and _file_identity(wal) not in (None, self._identities[wal]):
            return []
        return [wal, self.path.with_name(self.path.name + "-shm")]

    def _writes_work_again(self, stalled_for: float | None = None) -> None:
        """A commit succeeded; ``stalled_for``: how long it ran, if it had been declared stalled."""
        if self.file_lost is not None:
            # A commit already running when the file was found gone lands in the gone
            # file: it says nothing of writes to come (a reviewer's finding).
            self.write_error = self.file_lost
            return
        if self.write_error is None:
            return
        if stalled_for is not None:
            why, fields = f"the group commit that stalled finished after {round(stalled_for * 1000)} ms", {
                "commit_ms": round(stalled_for * 1000)}
        else:
            why, fields = f"after {self._failed_since_refusing} group commits failed", {
                "failed_commits": self._failed_since_refusing}
        log.warning("storage takes writes again (%s), %s; this node takes writes again", self.path, why,
                    extra={"event": "storage_writable", **fields})
        self.write_error = None
        self._wakeup.set()  # commit what waited for the disk (hints, purges, the floor)

    @property
    def queued_writes(self) -> int:
        return len(self._queue)

    async def close(self, *, clean: bool = True) -> None:
        """Commit everything queued, then close both connections. ``clean``: this node
        holds every tag it sent, so the next start need not catch up first (NodeCore)."""
        self._closing = True
        failed_before = self.failed_commits
        self._wakeup.set()
        await self._committer
        # A batch refused now held tags this node may have sent (a later batch
        # succeeding clears ``write_error``): the node cannot be told any more.
        if clean and self.write_error is None and self.failed_commits == failed_before:
            try:
                await self._writer.execute("DELETE FROM meta WHERE name = 'running'")
                await self._writer.commit()
            except sqlite3.Error as exc:
                log.warning("could not record a clean stop (%s): the next start catches up from every peer first", exc)
        await self._reader.close()
        await self._writer.close()


def is_claimed(path: Path) -> bool:
    """Whether the database file ``path`` names its node: a node's first start on it
    went as far as its first commit (``_claim_for_node``). No file, an empty one, or
    one left by a first start killed before that commit (its tables, no rows) is a
    new directory's, which a node must join with rather than vote with (kvwire up)."""
    return path.is_file() and _names_a_node(path) is True


def is_unclaimed(path: Path) -> bool:
    """Whether ``path`` is a database file no node's first start went as far as claiming:
    an empty file, or a first start's tables with no rows. Not one that is damaged, or
    not kvwire's (Storage.open refuses those, naming the damage)."""
    return path.is_file() and (path.stat().st_size == 0 or _names_a_node(path) is False)


def _names_a_node(path: Path) -> bool | None:
    """Whether the database file ``path`` names its node; None if it cannot tell (no meta
    table, or not a database)."""
    try:
        with reader_of(path, timeout=10) as db:
            return db.execute("SELECT 1 FROM meta WHERE name = 'node_id'").fetchone() is not None
    except sqlite3.Error:
        return None


@contextmanager
def reader_of(path: Path, *, timeout: float) -> Iterator[sqlite3.Connection]:
    """A connection that only reads a node's database file, which may be live.
    Read-write, not mode=ro: a read-only connection cannot open a WAL database whose
    -shm file is gone (the node stopped cleanly). query_only keeps it a reader."""
    db = sqlite3.connect(path, timeout=timeout)
    try:
        db.execute("PRAGMA query_only=ON")
        yield db
    finally:
        db.close()


async def _claim_for_node(db: aiosqlite.Connection, node_id: str, cluster_id: str, path: Path) -> bool:
    """Tie the data directory to one node id of one cluster: version tags name
    their writer, so two nodes sharing files, or one restarted under a new id,
    would mint colliding or misleading tags; and a node started on another
    cluster's files (a wrong path, a copied disk) would serve that cluster's keys
    and anti-entropy would copy them to every peer. True when the directory was
    new (never claimed)."""
    async with db.execute("SELECT name, value FROM meta WHERE name IN ('node_id', 'cluster_id')") as cursor:
        claimed = dict(await cursor.fetchall())
    owner = claimed.get("node_id")
    if owner is not None and owner != node_id:
        raise DataDirError(f"{path} belongs to node {owner!r}, not {node_id!r}; use that node id or another --data-dir")
    # Directories made before the cluster id was recorded hold no row: they take this one.
    cluster = claimed.get("cluster_id")
    if cluster is not None and cluster != cluster_id:
        raise DataDirError(f"{path} belongs to cluster {cluster!r}, not {cluster_id!r}; use --cluster-id {cluster} "
                           "or another --data-dir")
    # Written at every start, not only the first: a database file that opens but
    # can't be written (read-only, on a read-only mount) fails here, at start-up,
    # rather than leaving a node that looks healthy while every write fails.
    await db.executemany(META_SET, (("node_id", node_id), ("cluster_id", cluster_id)))
    return owner is None


def reason_of(error: OSError | sqlite3.Error) -> str:
    """``Permission denied`` rather than ``[Errno 13] Permission denied: '/path'``: messages name the path."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def _holds_a_wal(path: Path) -> bool:
    try:
        return wal_path(path).stat().st_size > 0
    except OSError:
        return False


def _quick_check_read_only(path: Path) -> tuple[bool, str | None]:
    """Whether QUICK_CHECK could read ``path`` and its WAL through a read-only connection,
    which never checkpoints the WAL into the file as it closes, and its first problem if
    any. Not checked if it cannot open the file so: the writer then checks it, or says why."""
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return False, None
    try:
        return True, first_damage([row[0] for row in db.execute(QUICK_CHECK).fetchall()])
    except sqlite3.OperationalError:
        return False, None  # locked, or no -shm a reader may use: not damage
    except sqlite3.DatabaseError as exc:
        return True, reason_of(exc)  # "file is not a database", "database disk image is malformed"
    finally:
        db.close()


def _refusal(path: Path, error: BaseException, *, wal: bool = False) -> DataDirError:
    """The error naming the file and the reason, with what to check where we know it:
    DataDirUnavailableError where the cause may pass (a full disk), else DataDirError."""
    reason = reason_of(error) if isinstance(error, (OSError, sqlite3.Error)) else str(error)
    if _may_pass(error):
        return DataDirUnavailableError(
            f"cannot use the database {path}: {reason}; free space on its file system, or check the disk "
            "(the node exits 1, so kvwire up and the systemd unit start it again)")
    hint = ""
    if "readonly" in reason or "read-only" in reason.lower() or "Permission denied" in reason:
        hint = "; check the owner and mode of the file and its directory (the node writes both)"
    elif "not a database" in reason or "malformed" in reason or isinstance(error, _DAMAGE) or "decode" in reason:
        hint = ("; the file is damaged or not kvwire's: restore it from a backup, or move it aside and start this "
                "node on an empty directory with --join, to copy the data from its peers (docs/operations.md, "
                "\"Replacing a node\")")
        if wal:
            hint += (f"; read with {wal_path(path).name} beside it, left by a run that did not stop cleanly, and "
                     "both are left as they were: if the file was put back from a backup over that run's files, "
                     f"its {wal_path(path).name} and -shm are not the backup's: put the backup's whole directory "
                     "in place of the data directory instead")
    return DataDirError(f"cannot use the database {path}: {reason}{hint}")


def _may_pass(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in _PASSING_ERRNOS
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_IOERR, _SQLITE_FULL)



class _Damaged(NamedTuple):
    """A row whose value is not one whole msgpack value: why not, and its version."""

    reason: str
    counter: int
    node: str


def _read_rows(db: sqlite3.Connection, keys: list[str]) -> list[tuple | _Damaged | None]:
    """Point reads of ``keys``, on SQLite's reader thread; for a value that is not
    one whole msgpack value (bytes changed on disk), why not, instead of its row.

    Values are not checksummed, but every value was one whole msgpack value when it
    was written, so one that is not now was changed on disk. Only its structure is
    read (about 1 ms a MiB): a changed letter of a string goes unseen (README, Limits)."""
    rows: list[tuple | _Damaged | None] = []
    for key in keys:
        row = db.execute("SELECT value, counter, node, deleted FROM kv WHERE key = ?", (key,)).fetchone()
        if row is not None and not row[3]:
            row = _damage(row[0], row[1], row[2]) or row
        rows.append(row)
    return rows


def _damage(value: Any, counter: int, node: str) -> _Damaged | None:
    """Why a live row's value is not one whole msgpack value (changed on disk), or None."""
    broken = structure_error(value)
    return None if broken is None else _Damaged(f"not one msgpack value: {broken}", counter, node)


class ScrubPage(NamedTuple):
    """One page of a scrub pass (``Storage.scrub_page``)."""

    checked: int  # live rows read and checked
    size: int  # bytes of their values
    last_key: str | None  # the last of them, where the next page starts after
    damaged: list[DamagedValueError]
    ended: bool  # no rows after these: the pass is over


def _scrub_rows(db: sqlite3.Connection, after: str | None, max_keys: int,
                max_bytes: int) -> tuple[int, int, str | None, list[tuple[str, _Damaged]], bool]:
    """On the reader's thread: ``Storage.scrub_page``'s rows, checked as ``_read_rows`` checks them.
    The value is read as a BLOB whatever its column type says: damage that made it text that
    is not UTF-8 failed the whole page in the sqlite3 module (a review), and one that made it
    a number is damage to report, not a TypeError."""
    rows = db.execute("SELECT key, CAST(value AS BLOB), typeof(value), counter, node FROM kv "
                      "WHERE key > ? AND deleted = 0 ORDER BY key LIMIT ?", ("" if after is None else after, max_keys))
    checked, size, last, damaged = 0, 0, after, []
    for key, value, stored_as, counter, node in rows:
        checked, last = checked + 1, key
        if stored_as != "blob":
            damaged.append((key, _Damaged(f"stored as {stored_as}, not bytes", counter, node)))
            continue
        size += len(value)
        found = _damage(value, counter, node)
        if found is not None:
            damaged.append((key, found))
        if size >= max_bytes:
            break
    return checked, size, last, damaged, checked < max_keys and size < max_bytes


def _key_after(db: sqlite3.Connection, after: str | None) -> str | None:
    row = db.execute("SELECT key FROM kv WHERE key > ? ORDER BY key LIMIT 1", ("" if after is None else after,)).fetchone()
    return None if row is None else row[0]


def _probe_transaction(db: sqlite3.Connection) -> None:
    """A one-row commit, on SQLite's thread: what any write needs of the disk."""
    db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('write_probe', ?)", (str(time.time()),))
    db.commit()


class _Upkeep(NamedTuple):
    """What a group commit carries besides client rows."""

    hint_rows: list[tuple]
    unhint_rows: list[tuple]
    purge_rows: list[tuple]
    floor: int | None
    joined: bool
    requests: list[tuple]
    expire_requests_before: float | None
    strand_rows: list[tuple]
    mend_rows: tuple | list[tuple] = ()


def _newest_requests(rows: list[tuple]) -> dict[tuple[str, str], tuple[Version, float, bool]]:
    """Each (request, key)'s record as the log's ``rows`` (in the order written) leave it:
    the highest tag, and of one tag a firm record over a tentative one (core/applied.py
    keeps them by the same rule), with the time of the row that said so."""
    newest: dict[tuple[str, str], tuple[Version, float, bool]] = {}
    for request, key, counter, node, at, tentative in rows:
        version, tentative = Version(counter, node), bool(tentative)
        held = newest.get((request, key))
        if held is None or (version, not tentative) > (held[0], not held[2]):
            newest[(request, key)] = (version, at, tentative)
    return newest


async def _migrate_requests(writer: aiosqlite.Connection) -> None:
    """Move a data directory's request records from the table kvwire kept them in
    before the request log (SCHEMA says why) into the log, in the open's transaction."""
    async with writer.execute(TABLE_EXISTS, (OLD_REQUESTS_TABLE,)) as cursor:
        if await cursor.fetchone() is None:
            return
    await writer.execute(MIGRATE_REQUESTS)
    await writer.execute(f"DROP TABLE {OLD_REQUESTS_TABLE}")
    log.info("moved the PUT request records to the request log (a one-time change of the data directory)")


def new_incarnation() -> str:
    """Eight base32 characters, 40 random bits: two incarnations of one node never meet."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


async def _incarnation_for_this_start(writer: aiosqlite.Connection, unclean: bool, node_id: str) -> str:
    """The incarnation this start mints under: a new one if it may have lost a tag
    this node minted (core/minter.py), written in the transaction that opens the
    directory, before the node can mint anything; else the one it had ('' if none)."""
    async with writer.execute("SELECT name, value FROM meta WHERE name IN (?, ?, ?)",
                              (JOINING, INCARNATION, BACKUP_TAKEN_AT)) as cursor:
        marks = dict(await cursor.fetchall())
    # Joining: a new or emptied data directory (--join), or a restored backup (its mark).
    if not unclean and JOINING not in marks:
        return str(marks.get(INCARNATION, ""))
    incarnation = new_incarnation()
    await writer.execute(META_SET, (INCARNATION, incarnation))
    minter = minter_name(node_id, incarnation)
    log.info("this node mints its version tags as %s from now on: it starts %s, so it may have lost a tag it "
             "minted, and no new tag may equal one", minter,
             # A backup of a running node says it was killed: the restore is the news.
             "from a restored backup" if BACKUP_TAKEN_AT in marks
             else "after an unclean stop" if unclean else "on a data directory that joins the cluster",
             extra={"event": "new_incarnation", "minter": minter})
    return incarnation


def _ahead_of(retried: list, queued: list) -> list:
    """``retried`` (a failed commit's rows, to go again) before ``queued`` (rows queued
    during it). Usually nothing was queued meanwhile, and the list is taken back as it
    is: prepending it to an empty one copied every row, up to a hint book's 100,000,
    at every failed commit, and a full disk fails some 250 a second under one client."""
    retried.extend(queued)
    return retried


def _write_transaction(db: sqlite3.Connection, rows: list[tuple], upkeep: _Upkeep) -> list[bool]:
    """One group commit, on SQLite's thread; of the mends in it, which applied."""
    if rows:
        db.executemany(UPSERT, rows)
    if upkeep.requests:
        db.executemany(REQUEST_INSERT, upkeep.requests)
    if upkeep.expire_requests_before is not None:
        db.execute(REQUEST_EXPIRE, (upkeep.expire_requests_before,))
    if upkeep.unhint_rows:
        db.executemany(HINT_DELETE_PEER, [row[:1] for row in upkeep.unhint_rows if row[1] is None])
    if upkeep.hint_rows:
        db.executemany(HINT_UPSERT, upkeep.hint_rows)
    if upkeep.unhint_rows:
        db.executemany(HINT_DELETE, [row for row in upkeep.unhint_rows if row[1] is not None])
    if upkeep.purge_rows:
        db.executemany(PURGE, upkeep.purge_rows)
    if upkeep.strand_rows:
        db.executemany(STRAND_UPSERT, upkeep.strand_rows)
    # One at a time: executemany's count is the sum, and each says whether its row was still the version mended.
    mended = [db.execute(MEND, row).rowcount == 1 for row in upkeep.mend_rows]
    if upkeep.floor is not None:
        db.execute(FLOOR_SAVE, (str(upkeep.floor),))
    if upkeep.joined:
        db.execute("DELETE FROM meta WHERE name IN (?, ?)", (JOINING, BACKUP_TAKEN_AT))
        db.execute(META_SET, (JOINED, "1"))
    db.commit()
    return mended

