"""Checking client histories: linearizability per key (Wing–Gong–Lowe), unique
version tags, no acknowledged write lost, replica convergence, and shrinking a failure to a small example.

``python -m kvwire.check HISTORY.jsonl`` runs every check on a saved history.
"""

from .history import OpKind, Operation, Outcome, dump_jsonl, load_jsonl, operation_from_json, validate_operation
from .invariants import check_converged, check_no_lost_writes, check_tag_order, check_tags
from .linearizability import DEFAULT_MAX_STEPS, KeyResult, LinearizabilityResult, check_linearizable
from .report import CheckReport, check_history, format_report
from .shrink import shrink

__all__ = [
    "DEFAULT_MAX_STEPS",
    "CheckReport",
    "KeyResult",
    "LinearizabilityResult",
    "OpKind",
    "Operation",
    "Outcome",
    "check_converged",
    "check_history",
    "check_linearizable",
    "check_no_lost_writes",
    "check_tag_order",
    "check_tags",
    "dump_jsonl",
    "format_report",
    "load_jsonl",
    "operation_from_json",
    "shrink",
    "validate_operation",
]
