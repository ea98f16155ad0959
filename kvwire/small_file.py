"""Reading a small file a node is given (its cluster secret, its auth file): bounded, and only a file."""

from __future__ import annotations

import os
import stat


def read_small_file(path: str | os.PathLike, *, limit: int, what: str) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them; ValueError
    naming it (as ``what``) otherwise. Read whole, /dev/zero grew the node until it ran out
    of memory, and a named pipe no one writes to hung its start."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(f"{what} {path} is not a regular file (a pipe or a device is not read); give a file")
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ValueError(f"{what} {path} is larger than {limit} bytes: not such a file")
    return data
