"""``kvwire bench``: the benchmarks' own command group (``bench/command.py``), under ``kvwire``."""

from __future__ import annotations

from kvwire.bench.command import bench

__all__ = ["bench"]
