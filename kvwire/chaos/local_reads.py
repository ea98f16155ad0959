"""What a ``consistency=one`` read may not do, stale as it is allowed to be.

Such a read may return an old value or none, so it has no place in the
linearizability check. It still may not return a value no PUT on that key
(acknowledged or indeterminate) had started to write before the read ended,
nor a value under a tag that elsewhere carries another value.
"""

from __future__ import annotations

from typing import Sequence

from kvwire.check import check_tags
from kvwire.check.history import Operation, OpKind, Outcome


def check_local_reads(operations: Sequence[Operation], local_reads: Sequence[Operation]) -> list[str]:
    """One sentence per problem found in ``local_reads`` given the rest of the history."""
    first_start: dict[tuple[str, str], float] = {}
    for op in operations:
        if op.kind is OpKind.PUT and op.outcome is not Outcome.FAIL and isinstance(op.value, str):
            slot = (op.key, op.value)
            first_start[slot] = min(first_start.get(slot, op.start), op.start)
    problems = []
    for read in local_reads:
        if read.outcome is not Outcome.OK:
            continue
        started = first_start.get((read.key, read.value)) if isinstance(read.value, str) else None
        if started is None or started > read.end:
            problems.append(f"consistency=one read of a value no PUT had started to write: {read.describe()}")
    already = set(check_tags(operations))
    problems += [problem for problem in check_tags([*operations, *local_reads]) if problem not in already]
    return problems
