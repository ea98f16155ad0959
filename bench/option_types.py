"""Option types of the bench commands that close two holes in click's own.

click's FloatRange lets ``nan`` through (every comparison with it is false, so no
bound is ever broken) and the run then fails deep inside with a traceback;
click's Path turns ``--out ''`` into ``.``, so results would land in whatever
directory the command was started from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click


class FloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan (and inf, but where a bound is infinite)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class DirectoryPath(click.Path):
    """A directory to write into, as a Path; the empty string is refused rather than read as '.'."""

    def __init__(self) -> None:
        # A file is refused later, by bench.output.prepare_directory, with the path it tried.
        super().__init__(path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path names no directory.", param, ctx)
        return super().convert(value, param, ctx)
