"""Where ``kvwire backup`` writes its copy until it is whole, and how it is put in place.

The copy is written under a name no backup has and put in place only once whole
and on disk, by a rename or link that replaces nothing: a backup cut short, even
by SIGKILL or a power cut, is never taken for a whole one. Each staging has a lock
file that its backup holds flock()ed, so that the next backup removes what a
killed one left (the kernel drops a dead process's locks), and only that.

Only regular files opened for writing are locked, never without LOCK_NB: a
directory's flock is another tool's (``flock backups kvwire backup ...`` in a
cron line) and fails on NFS, where flock is emulated with fcntl locks.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .storage import DATABASE_FILE_NAME, DataDirError, fsync_path

# A new DESTINATION is made whole as the directory PARENT/.NAME.RANDOM.backup-partial,
# which exists only while its lock file, that name and LOCK_SUFFIX, does (made first,
# removed last). The lock file is made under a name the clean-up does not match,
# locked, then renamed: one under its own name is a live backup's, or a dead one's.
STAGING_SUFFIX = ".backup-partial"
LOCK_SUFFIX = ".lock"
# Exactly the names NewDirectory gives (a hidden DESTINATION name, 64 random bits in hex):
# the clean-up removes nothing else.
_STAGING_NAME = re.compile(r"\..+\.[0-9a-f]{16}" + re.escape(STAGING_SUFFIX))
_UNLOCKED_PREFIX = ".kvwire-backup-lock."
# In a DESTINATION that existed, empty: the copy's name, and its lock file's.
PARTIAL_NAME = DATABASE_FILE_NAME + ".partial"
PARTIAL_LOCK_NAME = PARTIAL_NAME + LOCK_SUFFIX
_SQLITE_FILES = ("", "-journal", "-wal", "-shm")  # a database and what SQLite writes beside it


class BackupError(DataDirError):
    """The backup could not be made; the message says why."""


class NewDirectory:
    """A DESTINATION that does not exist: made whole as a directory beside it, then renamed."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.committed = False
        parent = destination.parent
        self._made = _make_directories(parent)  # each directory made, to sync its parent at the commit
        remove_killed_stagings(parent)
        self.directory = parent / f".{destination.name}.{secrets.token_hex(8)}{STAGING_SUFFIX}"
        self.lock_path = Path(f"{self.directory}{LOCK_SUFFIX}")
        self.lock, unlocked_path = tempfile.mkstemp(prefix=_UNLOCKED_PREFIX, dir=parent)  # O_RDWR, mode 600
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a name no other process knows: never busy
            os.rename(unlocked_path, self.lock_path)  # 64 random bits: no other backup's name
        except BaseException:
            _unlink(Path(unlocked_path))
            os.close(self.lock)
            raise
        try:
            self.directory.mkdir(mode=0o700)  # owner-only, as a data directory is
        except BaseException:
            self._release()
            raise
        self.copy = self.directory / DATABASE_FILE_NAME

    def commit(self, on_committed: Callable[[], None]) -> None:
        fsync_path(self.copy)
        fsync_path(self.directory)
        with _signals_held():
            try:
                # rename(2) replaces a directory only if it is empty, and never a file:
                # whatever appeared at DESTINATION meanwhile is kept (an empty directory holds nothing).
                os.rename(self.directory, self.destination)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
                raise BackupError(f"{self.destination} appeared while the copy was made; "
                                  "it is left as it is and the copy was not kept") from None
            self.committed = True
            on_committed()
        for directory in {self.destination.parent, *(made.parent for made in self._made)}:
            fsync_path(directory)

    def close(self) -> None:
        if not self.committed:
            shutil.rmtree(self.directory, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        _unlink(self.lock_path)  # the staging directory gone first: its lock file goes last
        os.close(self.lock)


class IntoEmptyDirectory:
    """A DESTINATION that exists, empty (a mount point, say): the copy is made in it under
    a partial name, then linked to its own."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.committed = False
        self.copy = destination / PARTIAL_NAME
        self.lock_path = destination / PARTIAL_LOCK_NAME
        remove_killed_stagings(destination.parent)  # as a new DESTINATION's backup does (README)
        if not destination.is_dir() or _holds_more_than_a_killed_copy(destination):
            raise _not_empty(destination)  # before the lock file is made in it
        self.lock = lock_file(self.lock_path, create=True)
        if self.lock is None:
            raise BackupError(f"another backup is being written to {destination}")
        try:
            if _holds_more_than_a_killed_copy(destination):
                raise _not_empty(destination)
            self._remove_copy()
        except BaseException:
            self._release()
            raise

    def commit(self, on_committed: Callable[[], None]) -> None:
        fsync_path(self.copy)
        with _signals_held():
            try:
                os.link(self.copy, self.destination / DATABASE_FILE_NAME)  # link(2) replaces nothing
            except FileExistsError:
                raise BackupError(f"{self.destination / DATABASE_FILE_NAME} appeared while the copy was made; "
                                  "it is left as it is and the copy was not kept") from None
            self.committed = True
            on_committed()
        fsync_path(self.destination)
        _unlink(self.copy)
        fsync_path(self.destination)

    def close(self) -> None:
        if not self.committed:
            self._remove_copy()
        self._release()

    def _remove_copy(self) -> None:
        for suffix in _SQLITE_FILES:
            _unlink(Path(f"{self.copy}{suffix}"))

    def _release(self) -> None:
        _unlink(self.lock_path)
        os.close(self.lock)


def _holds_more_than_a_killed_copy(destination: Path) -> bool:
    killed = {PARTIAL_LOCK_NAME, *(f"{PARTIAL_NAME}{suffix}" for suffix in _SQLITE_FILES)}
    return any(entry.name not in killed for entry in destination.iterdir())


def _not_empty(destination: Path) -> BackupError:
    return BackupError(f"{destination} exists and is not an empty directory; give a new path")


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back until the block ends: the copy put in place and the
    commit marked (and told) are one step, so that a signal between the two is never
    taken for one that came before, and a whole copy reported as nothing left."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def remove_killed_stagings(parent: Path) -> None:
    """Remove what killed backups left in ``parent``, whatever DESTINATION they were for:
    stagings whose lock file no process holds, and stagings without one (a live one has it)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return  # a drop directory one may write in but not list (mode 0333): nothing to see
    for name in names:
        if _STAGING_NAME.fullmatch(name.removesuffix(LOCK_SUFFIX)) and name.endswith(LOCK_SUFFIX):
            try:
                lock = lock_file(parent / name, create=False)
            except OSError:
                continue  # gone meanwhile, or not a file we may write: not ours to remove
            if lock is not None:
                _remove_staging(parent / name.removesuffix(LOCK_SUFFIX))
                _unlink(parent / name)
                os.close(lock)
    for name in names:
        if _STAGING_NAME.fullmatch(name) and not os.path.lexists(parent / f"{name}{LOCK_SUFFIX}"):
            _remove_staging(parent / name)


def _remove_staging(staging: Path) -> None:
    """``staging`` and the copy in it, if it is a directory holding nothing but a database
    and SQLite's files: a name that looks like ours is no proof it is (the user's own data)."""
    try:
        if staging.is_symlink() or not staging.is_dir():
            return
        if not set(os.listdir(staging)) <= {f"{DATABASE_FILE_NAME}{suffix}" for suffix in _SQLITE_FILES}:
            return
    except OSError:
        return
    shutil.rmtree(staging, ignore_errors=True)


def lock_file(path: Path, *, create: bool) -> int | None:
    """A descriptor of the regular file ``path`` holding its exclusive flock; None if another
    process holds it, or ``path`` names another file once it is locked (it was replaced)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked, named = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    if (locked.st_ino, locked.st_dev) != (named.st_ino, named.st_dev):
        os.close(fd)
        return None
    return fd


def _make_directories(directory: Path) -> list[Path]:
    """``mkdir -p directory``; the directories it made, outermost first."""
    missing = []
    while not os.path.lexists(directory) and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # made by another meanwhile
        made.append(path)
    return made


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # an error being reported matters more; the next backup tries again
