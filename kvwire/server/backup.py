"""A node's data, copied while it runs, into a data directory that rejoins its cluster.

SQLite's online backup copies the database as of one committed moment (one
read transaction, in WAL mode beside the node's writes), which copying the
files does not: a copy of a live ``kvwire.sqlite3`` and its ``-wal`` can be
torn between two commits.

The copy is marked *joining* (the state ``--join`` gives a new data
directory, docs/design.md 1.9). A restored node is behind its cluster: a
write acknowledged since the backup by a majority that included this node
may now be on one other node only. Counted in majorities at once, the
restored node and that other node's peer could answer a read without it, or
mint a later write's tag below it. Joining, it takes no part in majorities
until anti-entropy has caught it up from every peer, as after a lost disk.
A backup of a node that was running would join anyway (its copy says the
node was killed: an unclean stop joins, 1.2 step 3); one of a node stopped
cleanly would not, without the mark.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .storage import (
    BACKUP_TAKEN_AT, DATABASE_FILE_NAME, JOINING, META_SET, TABLE_EXISTS, DataDirError, reader_of, reason_of,
)

# The copy is written under a name no backup has and put in place only once whole
# and on disk, by a rename or link that replaces nothing: a backup cut short, even
# by SIGKILL or a power cut, is never taken for a whole one. Whatever is being
# written is flock()ed, so that the next backup removes what a killed one left
# (the kernel drops a dead process's locks), and only that.
STAGING_SUFFIX = ".backup-partial"  # a new DESTINATION, made whole as a directory beside it
PARTIAL_SUFFIX = ".partial"  # the copy's name in a DESTINATION that existed, empty
_SQLITE_FILES = ("", "-journal", "-wal", "-shm")  # a database and what SQLite writes beside it
# How long the copy waits for a lock the node holds (a checkpoint, say).
BUSY_TIMEOUT_S = 30.0


class BackupError(DataDirError):
    """The backup could not be made; the message says why."""


@dataclass(frozen=True, slots=True)
class BackupSummary:
    node_id: str | None
    keys: int  # live keys
    tombstones: int
    bytes: int
    path: Path


def back_up(data_dir: Path, destination: Path) -> BackupSummary:
    """Copy the node database in ``data_dir`` into the new data directory
    ``destination`` (which must not exist, or be empty), marked joining. On any
    failure, an interruption included, nothing is left in ``destination``; killed,
    nothing that looks like a backup, and nothing that refuses the next attempt."""
    source_path = Path(data_dir) / DATABASE_FILE_NAME
    destination = Path(destination)
    if not source_path.is_file():
        raise BackupError(f"no kvwire database at {source_path}: give a node's --data-dir")
    try:
        staging = _IntoEmptyDirectory(destination) if os.path.lexists(destination) else _NewDirectory(destination)
    except OSError as exc:
        raise BackupError(f"cannot use {exc.filename or destination}: {reason_of(exc)}") from None
    committed = False
    try:
        # Owner-only whatever the directory's mode (an existing one keeps its own):
        # the copy holds every key. SQLite writes into the empty file as it is.
        staging.copy.touch(mode=0o600, exist_ok=False)
        _copy(source_path, staging.copy)
        node_id, keys, tombstones = _mark_joining(staging.copy)
        _fsync(staging.copy)
        staging.commit()
        committed = True
    except (OSError, sqlite3.Error) as exc:
        raise BackupError(f"backing up {source_path} to {destination} failed: {reason_of(exc)}") from None
    finally:
        staging.close(committed)  # Ctrl-C and SIGTERM too: a copy not in place is removed
    return BackupSummary(node_id, keys, tombstones, (destination / DATABASE_FILE_NAME).stat().st_size, destination)


class _NewDirectory:
    """A DESTINATION that does not exist: made whole as a directory beside it, then renamed."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Held a moment: no backup removes a staging directory another has made and not yet locked.
        parent_lock = _lock(destination.parent)
        try:
            _remove_killed_stagings(destination)
            # mkdtemp makes it owner-only, as a data directory is.
            self.directory = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=STAGING_SUFFIX,
                                                   dir=destination.parent))
            self.lock = _lock(self.directory)
        finally:
            os.close(parent_lock)
        self.copy = self.directory / DATABASE_FILE_NAME

    def commit(self) -> None:
        _fsync(self.directory)
        try:
            # rename(2) replaces a directory only if it is empty, and never a file:
            # whatever appeared at DESTINATION meanwhile is kept (an empty directory holds nothing).
            os.rename(self.directory, self.destination)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise
            raise BackupError(f"{self.destination} appeared while the copy was made; "
                              "it is left as it is and the copy was not kept") from None
        _fsync(self.destination.parent)

    def close(self, committed: bool) -> None:
        if not committed:
            shutil.rmtree(self.directory, ignore_errors=True)
        os.close(self.lock)


class _IntoEmptyDirectory:
    """A DESTINATION that exists, empty (a mount point, say): the copy is made in it under
    a partial name, then linked to its own."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.copy = destination / (DATABASE_FILE_NAME + PARTIAL_SUFFIX)
        if not destination.is_dir():
            raise _not_empty(destination)
        self.lock = _lock(destination, wait=False)
        if self.lock is None:
            raise BackupError(f"another backup is being written to {destination}")
        try:
            killed = {f"{self.copy.name}{suffix}" for suffix in _SQLITE_FILES}  # what a killed backup left
            if any(entry.name not in killed for entry in destination.iterdir()):
                raise _not_empty(destination)
            self._remove_copy()
        except BaseException:
            os.close(self.lock)
            raise

    def commit(self) -> None:
        try:
            os.link(self.copy, self.destination / DATABASE_FILE_NAME)  # link(2) replaces nothing
        except FileExistsError:
            raise BackupError(f"{self.destination / DATABASE_FILE_NAME} appeared while the copy was made; "
                              "it is left as it is and the copy was not kept") from None
        self.copy.unlink()
        _fsync(self.destination)

    def close(self, committed: bool) -> None:
        if not committed:
            self._remove_copy()
        os.close(self.lock)

    def _remove_copy(self) -> None:
        for suffix in _SQLITE_FILES:
            try:
                Path(f"{self.copy}{suffix}").unlink(missing_ok=True)
            except OSError:
                pass  # an error being reported matters more; the next backup tries again


def _not_empty(destination: Path) -> BackupError:
    return BackupError(f"{destination} exists and is not an empty directory; give a new path")


def _remove_killed_stagings(destination: Path) -> None:
    """Staging directories beside ``destination`` that no backup holds locked: killed ones'."""
    pattern = f".{glob.escape(destination.name)}.*{STAGING_SUFFIX}"
    for staging in destination.parent.glob(pattern):
        try:
            lock = _lock(staging, wait=False)
        except OSError:
            continue  # gone meanwhile, or not a directory: not ours to remove
        if lock is not None:
            shutil.rmtree(staging, ignore_errors=True)
            os.close(lock)


def _lock(directory: Path, *, wait: bool = True) -> int | None:
    """An open descriptor of ``directory`` holding its exclusive flock; None if another holds it (without ``wait``)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy(source_path: Path, target_path: Path) -> None:
    with reader_of(source_path, timeout=BUSY_TIMEOUT_S) as source:
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)  # every page in one step: one read transaction, one moment
        finally:
            target.close()


def _mark_joining(path: Path) -> tuple[str | None, int, int]:
    """Mark the copy joining; its node id, live keys and tombstones."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=DELETE")  # one file, until the node opens it in WAL mode
        db.execute("PRAGMA synchronous=FULL")
        has_meta = db.execute(TABLE_EXISTS, ("meta",)).fetchone()
        row = db.execute("SELECT value FROM meta WHERE name = 'node_id'").fetchone() if has_meta else None
        if row is None:
            raise sqlite3.DatabaseError("the database names no node: it is not a kvwire node's")
        db.execute(META_SET, (JOINING, "1"))
        # The copy's moment, roughly (the backup step's end): a node restored from a
        # backup older than --tombstone-grace warns (kvwire.server.node). A copy of a
        # backup, or of a node restored from one and not yet joined (the mark is
        # dropped once it has), holds that older backup's data: it keeps its moment.
        if db.execute("SELECT 1 FROM meta WHERE name = ?", (BACKUP_TAKEN_AT,)).fetchone() is None:
            db.execute(META_SET, (BACKUP_TAKEN_AT, repr(time.time())))
        keys, tombstones = db.execute("SELECT count(*), coalesce(sum(deleted), 0) FROM kv").fetchone()
        return row[0], keys - tombstones, tombstones
    finally:
        db.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
