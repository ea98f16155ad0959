"""The cluster secret on disk: one line of base64, readable by its owner only (and other such files)."""

from __future__ import annotations

import os
from pathlib import Path

from .protocol.peer_auth import new_secret, parse_secret


def read_secret_file(path: str | os.PathLike) -> bytes:
    """The secret in ``path``; ValueError naming the file when it can't be read or is too short."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read cluster secret file {path}: {exc.strerror or exc}") from None
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
    would leave it empty."""
    if not replace:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(data)
        return
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        # Renamed over, /dev/null would become a file, and a symlink a file beside its target.
        raise ValueError(f"{path} is not a regular file (a symlink, a device or a pipe); only a file is replaced: "
                         "give the file's own path")
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
