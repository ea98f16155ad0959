"""What a checker reads: every client operation with when it started and how it ended.

The simulator and the real-process chaos run both write histories in this
shape, so one checker serves both. Times are floats on one clock per history
(virtual seconds in the simulator, ``time.monotonic()`` in a chaos run); only
their order matters.

An operation's ``outcome`` says what its client learnt:

- ``ok``: it took effect exactly once, between ``start`` and ``end``. A GET's
  ``value`` is what it read; a DELETE's ``ok`` means it deleted a live value.
- ``not_found``: a GET or DELETE that found no live value. For a DELETE this
  is a read of absence: it changed nothing.
- ``fail``: it certainly did not take effect (refused before any replica saw
  it, for example NO_QUORUM with ``maybe_applied`` false).
- ``unknown``: it timed out, lost its connection, or failed in a way that
  leaves open whether it was applied. It may take effect at any single point
  after ``start``, or never (Jepsen's ``:info``). ``end`` is None.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

from .values import shown


class OpKind(str, enum.Enum):
    GET = "get"
    PUT = "put"
    DELETE = "delete"


class Outcome(str, enum.Enum):
    OK = "ok"
    NOT_FOUND = "not_found"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key.

    ``value``: for PUT, the value written; for a GET that is ``ok``, the value
    read; None otherwise. ``version``: the tag the reply carried, as
    ``(counter, node)``, or None (used to check that no two values share a tag).
    """

    client: int
    kind: OpKind
    key: str
    start: float
    end: float | None
    outcome: Outcome
    value: Any = None
    version: tuple[int, str] | None = None
    node: str = ""  # the node that coordinated it, for reports
    index: int = field(default=-1, compare=False)  # position in the history, for reports

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OpKind(self.kind))
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        if not _is_time(self.start) or not (self.end is None or _is_time(self.end)):
            # Before comparing them: a string end failed with "'<' not supported...".
            raise ValueError(f"start and end must be finite numbers, got start={self.start!r} end={self.end!r}")
        if self.outcome is Outcome.UNKNOWN:
            if self.end is not None:
                raise ValueError("an operation with outcome 'unknown' has no end")
        elif self.end is None:
            raise ValueError(f"operation {self.kind.value} {self.key!r}: outcome {self.outcome.value!r} needs an end "
                             "(only 'unknown' has none)")
        elif self.end < self.start:
            raise ValueError(f"operation {self.kind.value} {self.key!r}: end must be at or after start")
        if self.version is not None:
            object.__setattr__(self, "version", (int(self.version[0]), str(self.version[1])))

    def describe(self) -> str:
        end = "…" if self.end is None else f"{self.end:.6f}"
        value = "" if self.value is None else f" {shown(self.value)}"
        return f"#{self.index} client {self.client} @{self.node or '?'} {self.kind.value} {self.key!r}{value} [{self.start:.6f}, {end}] -> {self.outcome.value}"


def dump_jsonl(operations: Iterable[Operation]) -> str:
    """One JSON object per line; values must be JSON-representable."""
    return "".join(json.dumps({**asdict(op), "kind": op.kind.value, "outcome": op.outcome.value}) + "\n" for op in operations)


# not_found is an answer only a GET or a DELETE can give (see the module docstring).
_OUTCOMES_BY_KIND = {
    OpKind.GET: frozenset(Outcome),
    OpKind.PUT: frozenset({Outcome.OK, Outcome.FAIL, Outcome.UNKNOWN}),
    OpKind.DELETE: frozenset(Outcome),
}
_FIELDS = {f.name for f in fields(Operation)}
_REQUIRED_FIELDS = ("client", "kind", "key", "start", "end", "outcome")


def _is_time(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: no time on any clock
        return False


def validate_operation(op: Operation) -> None:
    """Raise ValueError if ``op`` cannot be checked: a kind/outcome pair the
    format does not define, a key or node that is not a string, or a client or
    index that is not an integer. (Times that are not
    finite numbers, which would make real-time order meaningless, are refused
    as the Operation is made.)"""
    if op.outcome not in _OUTCOMES_BY_KIND[op.kind]:
        raise ValueError(f"a {op.kind.value} cannot have outcome {op.outcome.value!r}")
    if not isinstance(op.key, str):
        raise ValueError(f"key must be a string, got {op.key!r}")
    # Only reports use them, but a list or a map there is a history written wrong,
    # better named now than printed as if it meant something.
    for name, kind, wanted in (("client", int, "an integer"), ("node", str, "a string"), ("index", int, "an integer")):
        value = getattr(op, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name} must be {wanted}, got {value!r}")


def operation_from_json(record: Any, *, default_index: int = -1) -> Operation:
    """Build and validate one Operation from a decoded JSON object."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}")
    missing = [name for name in _REQUIRED_FIELDS if name not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(map(repr, missing))}")
    version = record.get("version")
    if version is not None and not (
        isinstance(version, (list, tuple))
        and len(version) == 2
        and isinstance(version[0], int)
        and not isinstance(version[0], bool)
        and isinstance(version[1], str)
    ):
        raise ValueError(f"version must be [counter, node] (an integer and a string) or null, got {version!r}")
    try:
        op = Operation(**{"index": default_index, **record})
    except TypeError as error:  # e.g. end < start between a number and a string
        raise ValueError(str(error)) from error
    validate_operation(op)
    return op


def load_jsonl(text: str) -> list[Operation]:
    """Parse ``dump_jsonl``'s output; a bad line raises ValueError naming its 1-based line number."""
    operations = []
    for number, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                operations.append(operation_from_json(json.loads(line), default_index=number))
            except ValueError as error:  # json.JSONDecodeError is one too
                raise ValueError(f"line {number + 1}: {error}") from error
            except RecursionError:
                raise ValueError(f"line {number + 1}: nested too deeply to read") from None
    return operations
