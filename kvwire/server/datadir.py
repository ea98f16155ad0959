"""One process per data directory: an exclusive lock held for the life of the node.

Two nodes on one directory each keep their own in-memory index and mint
version tags from it, so one overwrites rows the other acknowledged (`kvwire
serve` with no options and `kvwire up`'s n1 both use ./.kvwire/n1). SQLite's
own locking cannot catch this: WAL mode lets both open the same database.

``flock`` rather than a pid file: the kernel drops the lock when the process
dies, ``kill -9`` included, so a crash never leaves a stale lock to clean up by
hand. The pid written into the file is only there for the error message.

The lock is on the directory itself, besides the ``LOCK`` file: operators delete
a file named LOCK they take for stale, and a second process then locked a new
one (a storage probe: it served writes on the live node's database, and its
clean stop told the live node's next start, after a kill, that it had stopped
cleanly). A directory cannot be deleted from under its open files. A lock on the
directory that this process inherited (``flock DIR kvwire serve ...``) counts as
its own.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from .storage import DataDirError, reason_of

LOCK_FILE_NAME = "LOCK"


class DataDirInUseError(DataDirError):
    """Another process holds the data directory's lock."""

    def __init__(self, data_dir: Path, holder_pid: int | None) -> None:
        holder = f"pid {holder_pid}" if holder_pid is not None else "pid unknown"
        super().__init__(
            f"data directory {data_dir} is in use by another kvwire process ({holder}); stop it or use another --data-dir"
        )
        self.data_dir = data_dir
        self.holder_pid = holder_pid


class DataDirLockedError(DataDirInUseError):
    """The directory itself is locked, its LOCK file is not: a kvwire process whose
    LOCK file was deleted, or another program (``flock DIR command`` hands its lock
    to the command, a kvwire node among them)."""

    def __init__(self, data_dir: Path) -> None:
        DataDirError.__init__(
            self,
            f"data directory {data_dir} is locked by another process: a kvwire process whose {LOCK_FILE_NAME} file "
            f"was deleted, or another program holding a lock on the directory itself (flock(1) run on it, say); "
            "stop it or use another --data-dir",
        )
        self.data_dir = data_dir
        self.holder_pid = None


class DataDirLock:
    """``with DataDirLock(path):`` holds ``path`` and ``path/LOCK`` exclusively, or raises DataDirInUseError at once."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._fd: int | None = None
        self._dir_fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DataDirLock:
        if self._fd is not None:
            raise RuntimeError(f"the lock on {self.data_dir} is already held")
        try:
            # Owner-only, as etcd and PostgreSQL make theirs: the files hold every key.
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError(f"cannot create the data directory {self.data_dir}: {reason_of(exc)}") from None
        # The LOCK file first: a kvwire process holding the directory holds it too (and
        # has written its pid there), so a directory locked while the file is free is
        # held by something else, and the error can say so rather than name a pid.
        fd = self._lock_file()
        try:
            self._dir_fd = self._lock_directory()
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            # The pid is for another process's error message only, and the lock is held:
            # a full disk fails the node's start where it matters, at its database, with
            # a message that says so (it was blamed on the listen address).
            pass
        return self

    def _lock_directory(self) -> int | None:
        try:
            dir_fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise DataDirError(f"cannot open the data directory {self.data_dir}: {reason_of(exc)}") from None
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(dir_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                if _locked_by_this_process(self.data_dir):
                    # ``flock DIR kvwire serve ...``: flock(1) handed its locked descriptor
                    # to this process, which holds the lock through it while it lives.
                    return None
                raise DataDirLockedError(self.data_dir) from None
            # A file system that cannot lock a directory (NFS locks need a descriptor
            # open for writing): the LOCK file's lock still holds, as it did alone.
            return None
        return dir_fd

    def _lock_file(self) -> int:
        # Never deleted: removing it on exit would let a process that opened the
        # old file hold a lock on an unlinked inode while a third locks a new one.
        lock_path = self.data_dir / LOCK_FILE_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataDirError(f"cannot write in the data directory {self.data_dir} ({lock_path}): {reason_of(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirInUseError(self.data_dir, holder) from None
            raise DataDirError(f"cannot lock {lock_path}: {reason_of(exc)}") from None
        return fd  # the pid is written once the directory is held too (acquire)

    def release(self) -> None:
        """Closing the descriptors drops the locks; the file and its stale pid stay."""
        fds, self._fd, self._dir_fd = (self._fd, self._dir_fd), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _locked_by_this_process(directory: Path) -> bool:
    """Whether a descriptor this process inherited holds the exclusive flock on
    ``directory`` (flock locks belong to an open file: ``flock DIR command`` hands
    its own to the command). Read from /proc/self/fdinfo, without locking: a second
    flock through a descriptor holding a shared lock drops that lock before it
    fails (a reviewer's finding), and the shared lock is someone else's too."""
    try:
        wanted = os.stat(directory)
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in descriptors:
        try:
            status = os.fstat(int(name))
            if (status.st_dev, status.st_ino) != (wanted.st_dev, wanted.st_ino):
                continue
            with open(f"/proc/self/fdinfo/{name}") as info:
                lines = info.read().splitlines()
        except OSError:
            continue
        # "lock:\t1: FLOCK  ADVISORY  WRITE 1914 fe:00:2334885 0 EOF": locks held through this descriptor.
        if any(line.startswith("lock:") and line.split()[2:5:2] == ["FLOCK", "WRITE"] for line in lines):
            return True
    return False


def _read_pid(fd: int) -> int | None:
    """The holder's pid, or None while it has not written it yet (it locks first, then writes)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
