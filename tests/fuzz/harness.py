"""The command line both fuzz targets share: atheris, seeds from the spec's vectors, and a budget.

    python -m tests.fuzz.codec [-frames=N] [-runs=N] [-max_total_time=S] [libFuzzer flags] [corpus dirs or files]

The budget flags are counted here rather than by libFuzzer, which exits
without returning to Python, so that the run can end by printing what it did:

    FUZZ DONE target=codec inputs=... frames=... messages=... refusals=... seconds=...

Without a corpus directory, the spec's vectors (tests/vectors) seed a
temporary one. Given files instead of directories, libFuzzer runs just those
inputs (a crash reproducer, say) and exits. Other flags go to libFuzzer
unchanged; -timeout defaults to 10 seconds per input, so a hang is reported as one.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import atheris

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "protocol_vectors.json"
_BUDGET_FLAGS = ("-frames=", "-runs=", "-max_total_time=")
# A progress line this often, so that a long pass shows it is alive.
_PROGRESS_EVERY_INPUTS = 100_000


def vectors() -> dict:
    """tests/vectors/protocol_vectors.json: the spec's valid and invalid frames."""
    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def vector_bytes(vector: dict) -> bytes:
    return bytes.fromhex(vector["hex"].replace(" ", ""))


class Stats(Counter):
    """Counts a target keeps; ``inputs`` and ``frames`` drive the budget."""

    def line(self, target: str, seconds: float) -> str:
        counts = " ".join(f"{name}={count}" for name, count in sorted(self.items()))
        return f"FUZZ DONE target={target} {counts} seconds={seconds:.1f}"


def main(target: str, one_input: Callable[[bytes], None], stats: Stats, seeds: Iterable[bytes],
         argv: list[str] | None = None) -> None:
    """Fuzz ``one_input`` until a budget runs out (never returns), starting from ``seeds``."""
    argv = list(sys.argv if argv is None else argv)
    budget = {flag: float(arg.split("=", 1)[1]) for arg in argv for flag in _BUDGET_FLAGS if arg.startswith(flag)}
    args = [arg for arg in argv if not arg.startswith(_BUDGET_FLAGS)]
    if not any(arg.startswith("-timeout=") for arg in args):
        args.append("-timeout=10")
    if not any(not arg.startswith("-") for arg in args[1:]):
        args.append(_seed_corpus(seeds))
    max_frames = budget.get("-frames=", float("inf"))
    max_inputs = budget.get("-runs=", float("inf"))
    max_seconds = budget.get("-max_total_time=", float("inf"))
    started = time.monotonic()

    def fuzz_one(data: bytes) -> None:
        one_input(data)
        stats["inputs"] += 1
        seconds = time.monotonic() - started
        if stats["frames"] >= max_frames or stats["inputs"] >= max_inputs or seconds >= max_seconds:
            print(stats.line(target, seconds), file=sys.stderr, flush=True)
            sys.stdout.flush()
            cleanup()
            os._exit(0)  # libFuzzer has no way back to Python; atexit handlers do not run
        if stats["inputs"] % _PROGRESS_EVERY_INPUTS == 0:
            print(stats.line(target, seconds).replace("DONE", "PROGRESS"), file=sys.stderr, flush=True)

    atheris.Setup(args, fuzz_one)
    atheris.Fuzz()


_cleanups: list[Callable[[], None]] = []


def cleanup() -> None:
    """Remove what the run created; called before the budget's os._exit, and at exit after a crash."""
    while _cleanups:
        _cleanups.pop()()


atexit.register(cleanup)


def temporary_directory(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _cleanups.append(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def _seed_corpus(seeds: Iterable[bytes]) -> str:
    # libFuzzer adds the inputs it finds interesting to its first corpus
    # directory; a temporary one keeps the working tree clean.
    corpus = temporary_directory("kvwire-fuzz-corpus-")
    for number, data in enumerate(seeds):
        (corpus / f"seed-{number:03d}").write_bytes(data)
    return str(corpus)
