"""A chaos run as JSON (summary.json, ``-o json``) and as a table for people; the files of ``--out``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from kvwire.check import dump_jsonl, format_report
from kvwire.check.history import Operation, Outcome

from .run import ChaosResult


def _by_outcome(operations: Iterable[Operation]) -> dict[str, int]:
    counts = Counter(op.outcome.value for op in operations)
    return {outcome.value: counts.get(outcome.value, 0) for outcome in Outcome}


def summary(result: ChaosResult) -> dict[str, Any]:
    config = result.config
    by_kind: dict[str, dict[str, int]] = {}
    for op in result.operations:
        by_kind.setdefault(op.kind.value, Counter())[op.outcome.value] += 1
    recovery: dict[str, list[float | None]] = {}
    for fault in result.faults:
        recovery.setdefault(fault.kind, []).append(None if fault.recovered_s is None else round(fault.recovered_s, 3))
    return {
        "ok": result.ok,
        "verdict": result.report.verdict,
        "seed": config.seed,
        "duration_s": config.duration,
        "clients": config.clients,
        "library_clients": config.library,
        "fault_kinds": list(config.faults),
        "seconds": round(result.seconds, 3),
        "keys": result.keys,
        "operations": {
            "total": len(result.operations),
            "by_outcome": _by_outcome(result.operations),
            "by_kind": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
            "consistency_one_reads": {"total": len(result.local_reads), "by_outcome": _by_outcome(result.local_reads)},
        },
        "errors": dict(sorted(result.errors.items())),
        "faults": {
            "by_kind": dict(Counter(fault.kind for fault in result.faults)),
            "partitions_by_variant": dict(Counter(fault.variant for fault in result.faults if fault.kind == "partition")),
            "peers_up_after_heal_s": recovery,
            "list": [fault.to_json() for fault in result.faults],
        },
        "converged_after_last_heal_s": None if result.converged_s is None else round(result.converged_s, 3),
        "anomalies": result.problems,
    }


def _counts(mapping: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in mapping.items()) or "none"


def format_table(result: ChaosResult) -> str:
    data = summary(result)
    config = result.config
    ops, faults = data["operations"], data["faults"]
    lines = [
        f"kvwire chaos: seed {config.seed}, {config.duration:g} s, {config.clients} clients "
        f"({config.library} through the client library), faults {','.join(config.faults) or 'none'}; {result.keys} keys",
        f"operations  {ops['total']}: {_counts(ops['by_outcome'])}",
        f"            + {ops['consistency_one_reads']['total']} consistency=one reads (checked apart: they may be stale)",
        f"errors      {_counts(data['errors'])}",
        f"faults      {len(result.faults)}: {_counts(faults['by_kind'])}"
        + (f" (partitions: {_counts(faults['partitions_by_variant'])})" if faults["partitions_by_variant"] else ""),
    ]
    if result.faults:
        lines.append(f"  {'at':>8}  {'fault':<44} {'held':>7}  peers UP after heal")
        for fault in result.faults:
            held = "" if fault.healed is None else f"{fault.healed - fault.start:6.2f}s"
            up = f"{fault.recovered_s:.2f} s" if fault.recovered_s is not None else f"not within {config.recovery_timeout:g} s"
            lines.append(f"  {fault.start:7.2f}s  {fault.label:<44} {held:>7}  {up}")
    converged = data["converged_after_last_heal_s"]
    lines.append(f"converged   {converged:.2f} s after the last heal" if converged is not None else "converged   no")
    anomalies = result.problems
    lines.append(f"anomalies   {len(anomalies) or 'none'}")
    lines += [f"  - {problem}" for problem in anomalies]
    lines.append(f"verdict     {'ok' if result.ok else 'ANOMALIES' if result.report.verdict != 'unknown' else 'undecided'}")
    text = "\n".join(lines) + "\n"
    if not result.report.ok:
        text += "\n" + format_report(result.report)
    return text


def write_outputs(result: ChaosResult, out: Path) -> None:
    """history.jsonl (what ``python -m kvwire.check`` reads), local_reads.jsonl, replicas.json, summary.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.jsonl").write_text(dump_jsonl(result.operations))
    (out / "local_reads.jsonl").write_text(dump_jsonl(result.local_reads))
    (out / "replicas.json").write_text(json.dumps(result.replica_states, indent=1, sort_keys=True) + "\n")
    (out / "summary.json").write_text(json.dumps(summary(result), indent=2) + "\n")
