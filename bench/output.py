"""Where benchmark results go: checked before a run, so a bad --out costs no run."""

from __future__ import annotations

import tempfile
from pathlib import Path


def prepare_directory(path: Path, option: str) -> Path:
    """Create ``path`` if needed and prove it writable; ValueError naming ``option`` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path
