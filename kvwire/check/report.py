"""All the history checks in one call, and a report a person can read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .history import Operation, OpKind, Outcome
from .invariants import check_converged, check_no_lost_writes, check_tag_order, check_tags
from .linearizability import DEFAULT_MAX_STEPS, KeyResult, LinearizabilityResult, check_linearizable
from .shrink import shrink
from .values import value_key


@dataclass
class CheckReport:
    """``verdict`` is "violation" when any check found a problem, else the
    linearizability verdict ("ok" or "unknown": some key exceeded its budget).
    ``problems`` holds one sentence per definite problem, non-linearizable keys included."""

    ok: bool
    verdict: str
    problems: list[str]
    linearizability: LinearizabilityResult
    max_steps: int = DEFAULT_MAX_STEPS  # kept so that format_report shrinks with the same budget


def check_history(
    operations: Iterable[Operation],
    *,
    replica_states: Mapping[str, Mapping[str, Any]] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> CheckReport:
    """Linearizability per key, unique version tags growing with real time, no acknowledged write lost, and (given ``replica_states``,
    node -> key -> (version, deleted, value)) convergence of the replicas."""
    operations = list(operations)
    linearizability = check_linearizable(operations, max_steps=max_steps)
    problems = [
        f"key {result.key!r} is not linearizable" for result in linearizability.keys if result.verdict == "violation"
    ]
    problems += check_tags(operations)
    problems += check_tag_order(operations)
    problems += check_no_lost_writes(operations)
    if replica_states is not None:
        problems += check_converged(replica_states)
    verdict = "violation" if problems else linearizability.verdict
    return CheckReport(verdict == "ok", verdict, problems, linearizability, max_steps)


def format_report(report: CheckReport, *, shrink_violations: bool = True) -> str:
    """The verdict, each problem, then for each non-linearizable key its
    (shrunk) history one operation per line, and the keys left undecided."""
    result = report.linearizability
    lines = [
        f"verdict: {report.verdict} (checked {result.checked_operations} operation(s) on {result.checked_keys} key(s))",
    ]
    lines += [f"problem: {problem}" for problem in report.problems]
    for key_result in result.keys:
        if key_result.verdict == "violation":
            lines.append("")
            lines += _format_violation(key_result, report.max_steps, shrink_violations)
    undecided = [key_result for key_result in result.keys if key_result.verdict == "unknown"]
    if undecided:
        lines.append("")
        lines.append(f"undecided (search budget of {report.max_steps} steps exhausted; --max-steps raises it) "
                     f"on {len(undecided)} key(s):")
        lines += [f"  {key_result.key!r}: {len(key_result.operations)} operations" for key_result in undecided]
    return "\n".join(lines) + "\n"


def _format_violation(key_result: KeyResult, max_steps: int, shrink_violations: bool) -> list[str]:
    operations = list(key_result.operations)
    if shrink_violations:
        # Reads and deletes whose writer the shown history must keep, if it keeps them.
        needs_writer = _with_writers(operations)

        def still_fails(candidate: list[Operation]) -> bool:
            if not _keeps_writers(candidate, needs_writer):
                return False
            return check_linearizable(candidate, max_steps=max_steps).verdict == "violation"

        smaller = shrink(operations, still_fails)
        title = f"key {key_result.key!r}: not linearizable; a minimal failing history ({len(smaller)} of {len(operations)} operations):"
        operations = smaller
    else:
        title = f"key {key_result.key!r}: not linearizable; its history ({len(operations)} operations):"
    lines = [title]
    lines += [f"  {op.describe()}" for op in operations]
    lines.append("why:")
    lines += [f"  {line}" for line in _explanation_of(operations, max_steps, key_result).splitlines()]
    return lines


def _with_writers(operations: Sequence[Operation]) -> set[int]:
    """The ids of the GET oks and DELETE oks some PUT of ``operations`` could explain."""
    earliest = _earliest_puts(operations)
    return {id(op) for op in operations if _needs_writer(op) and _explained(op, earliest)}


def _keeps_writers(candidate: list[Operation], needs_writer: set[int]) -> bool:
    """Whether every GET ok and DELETE ok kept still has a PUT that could explain it, if the
    original had one. Without this, the smallest failing history of almost any violation is a
    lone read of a value nobody wrote, which is minimal and tells the reader nothing. Linear
    in the candidate: comparing every kept read with every original PUT, at every step of the
    shrink, took 14 s to show a 2,000-operation key (a checker probe's finding)."""
    earliest = _earliest_puts(candidate)
    return all(_explained(op, earliest) for op in candidate if id(op) in needs_writer)


def _needs_writer(op: Operation) -> bool:
    return op.outcome is Outcome.OK and op.kind is not OpKind.PUT


def _earliest_puts(operations: Sequence[Operation]) -> tuple[float, dict]:
    """When the first PUT that may have taken effect began, of any value and of each value."""
    first, by_value = math.inf, {}
    for put in operations:
        if put.kind is OpKind.PUT and put.outcome is not Outcome.FAIL:
            first = min(first, put.start)
            value = value_key(put.value)
            by_value[value] = min(by_value.get(value, math.inf), put.start)
    return first, by_value


def _explained(op: Operation, earliest: tuple[float, dict]) -> bool:
    """A PUT began by the time ``op`` ended: any PUT for a DELETE, one of the value read for a GET."""
    first, by_value = earliest
    began = first if op.kind is OpKind.DELETE else by_value.get(value_key(op.value), math.inf)
    return began <= op.end


def _explanation_of(operations: list[Operation], max_steps: int, original: KeyResult) -> str:
    # Explain the history that is shown: the shrunk one's explanation is the short one.
    for key_result in check_linearizable(operations, max_steps=max_steps).keys:
        return key_result.explanation
    return original.explanation
