"""The cluster secret on disk: one line of base64, readable by its owner only (and other such files)."""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

from .protocol.peer_auth import new_secret, parse_secret
from .small_file import read_small_file


# A secret is one line of base64 (new_secret: 44 bytes); anything far larger is the wrong file.
MAX_SECRET_FILE_BYTES = 4096


def read_secret_file(path: str | os.PathLike) -> bytes:
    """The secret in ``path``; ValueError naming the file when it can't be read or is too short."""
    data = read_small_file(path, limit=MAX_SECRET_FILE_BYTES, what="cluster secret file")
    return parse_secret(data, os.fspath(path))


def write_secret_file(path: str | os.PathLike, *, replace: bool = False) -> None:
    """A new secret in ``path``, mode 600. FileExistsError if it exists and not ``replace``."""
    write_private_file(path, new_secret(), replace=replace)


def write_private_file(path: str | os.PathLike, data: bytes, *, replace: bool = False) -> None:
    """``data`` in ``path``, created with mode 600 (never readable by others, not even
    for a moment). FileExistsError if it exists and not ``replace``; ValueError if what
    ``replace`` would replace is not a regular file. A replaced file
    is a new one, renamed over the old: opening the old one would keep its mode
    (a 644 file would take the new secret readable by all), and a crash half-way
    would leave it empty. A new file is whole or absent too: written beside it, then
    linked in place (which fails if the path exists); created empty and then written,
    a full disk left an empty secret that every later start refused."""
    path = Path(path)
    if replace and (path.is_symlink() or (path.exists() and not path.is_file())):
        # Renamed over, /dev/null would become a file, and a symlink a file beside its target.
        raise ValueError(f"{path} is not a regular file (a symlink, a device or a pipe); only a file is replaced: "
                         "give the file's own path")
    if not replace and (path.exists() or path.is_symlink()):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
    # A name no other writer has, this process's earlier attempts included.
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(partial, path)
        else:
            _link_new(partial, path, data)
    finally:
        partial.unlink(missing_ok=True)


def _link_new(partial: Path, path: Path, data: bytes) -> None:
    """``partial`` in place at ``path``, which must not exist (FileExistsError if another
    writer got there first). On a file system without hard links, created and written
    there, and removed again if the write fails."""
    try:
        os.link(partial, path)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def warn_if_readable_by_others(log: logging.Logger, what: str, path: str | os.PathLike | None) -> None:
    """Warn when ``what`` (a secret's file) may be read by others than its owner.

    A warning, not a refusal as ssh and PostgreSQL make of such a private key:
    secrets mounted by orchestrators are often mode 644 (Kubernetes' default)."""
    if path is not None and os.stat(path).st_mode & 0o077:
        log.warning("%s %s is readable by others than its owner; chmod 600 it", what, os.fspath(path),
                    extra={"event": "file_readable_by_others"})
