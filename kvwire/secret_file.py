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
    for a moment). FileExistsError if it exists and not ``replace``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    with os.fdopen(os.open(path, flags, 0o600), "wb") as file:
        file.write(data)
