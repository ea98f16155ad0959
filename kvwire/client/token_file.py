"""A client's access token from a file (``--token-file``): bounded, UTF-8, not blank.

The CLI and ``kvwire bench`` read it here, each turning the ValueError into a
usage error of its own.
"""

from __future__ import annotations

import os
import stat

# Tokens are short lines (the README's are 43 characters); anything far larger is the wrong file.
MAX_TOKEN_FILE_BYTES = 4096


def read_token_file(path: str | os.PathLike) -> str:
    """The token in the file at ``path``, whitespace around it dropped; ValueError
    naming the file if it can't be read, is too large, is not UTF-8 or is blank."""
    try:
        if _is_named_pipe(path):
            # Opened, a named pipe no one writes to blocks for ever (a security probe's finding).
            raise ValueError(f"{path} is a named pipe, not read; give a file")
        with open(path, "rb") as file:
            raw = file.read(MAX_TOKEN_FILE_BYTES + 1)  # /dev/zero never ends
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_TOKEN_FILE_BYTES} bytes, too large for a token file")
    try:
        # utf-8-sig: an editor's byte order mark is not part of the token.
        token = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} holds a byte that is not UTF-8 text, at offset {exc.start}") from None
    if not token:
        raise ValueError(f"{path} is empty")
    return token


def _is_named_pipe(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a named pipe on a file system (mkfifo), or a link to one.
    Not an anonymous pipe: ``--token-file <(...)`` and ``/dev/stdin`` name one, whose
    writer is the shell, and which keep a token off the disk and out of argv."""
    for candidate in (path, os.path.realpath(path)):
        try:
            if stat.S_ISFIFO(os.lstat(candidate).st_mode):
                return True
        except OSError:
            pass  # an anonymous pipe's target ("pipe:[...]") is no file
    return False
