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

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .backup_staging import BackupError, IntoEmptyDirectory, NewDirectory
from .storage import (BACKUP_TAKEN_AT, DATABASE_FILE_NAME, JOINING, META_SET, QUICK_CHECK, TABLE_EXISTS, first_damage,
                      reader_of, reason_of)

# How long the copy waits for a lock the node holds (a checkpoint, say).
BUSY_TIMEOUT_S = 30.0

__all__ = ["BackupError", "BackupSummary", "back_up"]


@dataclass(frozen=True, slots=True)
class BackupSummary:
    node_id: str | None
    keys: int  # live keys
    tombstones: int
    bytes: int
    path: Path


def back_up(data_dir: Path, destination: Path, on_committed: Callable[[], None] = lambda: None) -> BackupSummary:
    """Copy the node database in ``data_dir`` into the new data directory
    ``destination`` (which must not exist, or be empty), marked joining. On any
    failure, an interruption included, nothing is left in ``destination``; killed,
    nothing that looks like a backup, and nothing that refuses the next attempt
    (kvwire.server.backup_staging). ``on_committed`` is called as soon as the whole
    copy is in place: an interruption after it must not be reported as a failure."""
    source_path = Path(data_dir) / DATABASE_FILE_NAME
    destination = Path(destination)
    if not source_path.is_file():
        raise BackupError(f"no kvwire database at {source_path}: give a node's --data-dir")
    if _within(destination, Path(data_dir)):
        # The restore moves the data directory aside, and replacing a lost node
        # empties it: a copy kept in it goes with the data it was to save.
        raise BackupError(f"{destination} is inside the data directory {data_dir}: a backup there is lost "
                          "with it; give a DESTINATION outside it")
    try:
        staging = IntoEmptyDirectory(destination) if os.path.lexists(destination) else NewDirectory(destination)
    except OSError as exc:
        # DESTINATION, not the hidden name the failing call was given: the user knows only the first.
        raise BackupError(f"cannot use {destination}: {reason_of(exc)}") from None
    try:
        # Owner-only whatever the directory's mode (an existing one keeps its own):
        # the copy holds every key. SQLite writes into the empty file as it is.
        staging.copy.touch(mode=0o600, exist_ok=False)
        _copy(source_path, staging.copy)
        _check_whole(staging.copy, source_path)
        node_id, keys, tombstones = _mark_joining(staging.copy)
        size = staging.copy.stat().st_size
        staging.commit(on_committed)
    except (OSError, sqlite3.Error) as exc:
        if staging.committed:
            raise BackupError(f"the copy is whole in {destination}, but syncing its directory failed: "
                              f"{reason_of(exc)}; a power cut may yet lose it") from None
        raise BackupError(f"backing up {source_path} to {destination} failed: {reason_of(exc)}") from None
    finally:
        staging.close()  # Ctrl-C and SIGTERM too: a copy not in place is removed
    return BackupSummary(node_id, keys, tombstones, size, destination)


def _within(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or below it, through symbolic links and ``..`` too."""
    return path.resolve().is_relative_to(directory.resolve())


def _copy(source_path: Path, target_path: Path) -> None:
    with reader_of(source_path, timeout=BUSY_TIMEOUT_S) as source:
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)  # every page in one step: one read transaction, one moment
        finally:
            target.close()


def _check_whole(path: Path, source_path: Path) -> None:
    """Refuse a copy with a damaged page. SQLite's backup copies pages as they
    are, and the copy's count reads only the ``kv`` table's tree: a damaged
    value's page (an overflow page) or an index made a backup that looked whole
    and failed when restored (a node's start now runs the same check). quick_check
    reads every page (0.18 s for a million keys of 100 bytes, 147 MB, from the
    page cache), on the copy, so the node is not held."""
    db = sqlite3.connect(path)
    try:
        first = first_damage([row[0] for row in db.execute(QUICK_CHECK)])
    finally:
        db.close()
    if first is not None:
        raise BackupError(f"{source_path} is damaged (SQLite's quick_check: {first}), so no copy was kept; "
                          "its peers hold every acknowledged write: give the node a new disk and start it "
                          "with --join (docs/operations.md, Replacing a node)")


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

