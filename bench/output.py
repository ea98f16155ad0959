"""Where benchmark results go: checked before a run, so a bad --out costs no run; and
how a measuring command ends."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import click


def prepare_directory(path: Path, option: str) -> Path:
    """Create ``path`` if needed and prove it writable; ValueError naming ``option`` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def measure_or_exit(ctx: click.Context, measure: Callable[[], dict[str, Any]], as_json: bool) -> dict[str, Any] | None:
    """Run ``measure``. A run that could not finish (OSError, RuntimeError) prints one
    line and exits 1; with ``as_json`` the result is printed as JSON and None returned,
    else the result is returned for the command to print."""
    try:
        result = measure()
    except (OSError, RuntimeError) as exc:  # TimeoutError is an OSError
        click.echo(f"{ctx.command_path}: {type(exc).__name__}: {exc}", err=True)
        ctx.exit(1)
    if as_json:
        click.echo(json.dumps(result))
        return None
    return result
