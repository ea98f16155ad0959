"""Shrink a failing history to a small counterexample: Zeller's delta debugging.

ddmin (Zeller & Hildebrandt, "Simplifying and Isolating Failure-Inducing
Input", 2002) tries ever smaller chunks of the history and their complements.
It ends only after trying, at the finest granularity, the removal of every
single operation, so what it returns is 1-minimal: dropping any one operation
makes the failure go away. Order is kept, and each operation keeps its
``index``, so the counterexample still points into the original history.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .history import Operation


def shrink(operations: Sequence[Operation], still_fails: Callable[[list[Operation]], bool]) -> list[Operation]:
    """A 1-minimal sub-sequence of ``operations`` for which ``still_fails`` holds."""
    current = list(operations)
    if not still_fails(current):
        raise ValueError("shrink needs a history that fails to begin with")
    granularity = 2
    while len(current) >= 2:
        chunks = _split(current, granularity)
        smaller = _first_failing(chunks, still_fails) if granularity > 2 else None
        if smaller is not None:
            current, granularity = smaller, 2
            continue
        complements = [[op for other in chunks if other is not chunk for op in other] for chunk in chunks]
        smaller = _first_failing(complements, still_fails)
        if smaller is not None:
            current, granularity = smaller, max(granularity - 1, 2)
            continue
        if granularity >= len(current):
            break  # every single removal was tried: 1-minimal
        granularity = min(2 * granularity, len(current))
    if len(current) == 1 and still_fails([]):
        return []
    return current


def _split(operations: list[Operation], parts: int) -> list[list[Operation]]:
    size, extra = divmod(len(operations), parts)
    chunks, start = [], 0
    for number in range(parts):
        end = start + size + (1 if number < extra else 0)
        chunks.append(operations[start:end])
        start = end
    return chunks


def _first_failing(candidates: list[list[Operation]], still_fails: Callable[[list[Operation]], bool]) -> list[Operation] | None:
    for candidate in candidates:
        if candidate and still_fails(candidate):
            return candidate
    return None
