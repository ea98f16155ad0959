"""Per-key linearizability of a register with delete: the Wing–Gong–Lowe search.

The search is the one Knossos and Porcupine run (Wing & Gong 1993, with the
memoisation of Lowe, "Testing for linearizability", 2017): walk the history's
call and return events in time order; at a call, try to linearize that
operation now; at a return whose operation is not yet linearized, undo the
most recent choice. A (set of linearized operations, register state) pair seen
before cannot lead anywhere new, so it is cached and never explored twice.
One pruning of our own makes highly concurrent histories cheap: a read that
holds now is placed at once and never tried elsewhere (see ``_Search.run``).

Keys are independent registers, so the history is partitioned by key first
(Herlihy & Wing's locality; Porcupine's "P-compositionality"): many short
searches instead of one exponential one.

Operations whose outcome is ``unknown`` have no return event. Neither an
unknown PUT nor an unknown DELETE has a precondition, so "never took effect"
and "took effect after everything else" are indistinguishable: the search
succeeds as soon as every operation with a known outcome is linearized.

Real-time order: ``a`` precedes ``b`` only if ``a.end < b.start``; operations
that merely touch (``a.end == b.start``) are concurrent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Iterable

from .history import Operation, OpKind, Outcome, validate_operation
from .values import shown, value_key

DEFAULT_MAX_STEPS = 200_000

ABSENT = -1  # register state when no live value is held; live values are interned ids >= 0

# What a kept operation does to the register, decided once per operation.
_WRITE = 0  # PUT ok/unknown: state := value
_READ_VALUE = 1  # GET ok: requires state == value
_READ_ABSENT = 2  # GET not_found, DELETE not_found: requires ABSENT
_DELETE_LIVE = 3  # DELETE ok: requires a live value, then ABSENT
_DELETE_ANY = 4  # DELETE unknown: ABSENT, whatever was there
_READS = (_READ_VALUE, _READ_ABSENT)  # change nothing, so may be placed greedily


@dataclass(frozen=True)
class KeyResult:
    key: str
    verdict: str  # "ok" | "violation" | "unknown"
    operations: tuple[Operation, ...]
    steps: int
    explanation: str


@dataclass(frozen=True)
class LinearizabilityResult:
    verdict: str  # "ok" if every key is; "violation" if any key is; else "unknown"
    keys: tuple[KeyResult, ...]  # only the keys that are not ok
    checked_keys: int
    checked_operations: int


def check_linearizable(operations: Iterable[Operation], *, max_steps: int = DEFAULT_MAX_STEPS) -> LinearizabilityResult:
    """Check every key's sub-history; ``max_steps`` bounds the search per key."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    by_key: dict[str, list[Operation]] = {}
    count = 0
    for op in operations:
        try:
            validate_operation(op)
        except ValueError as error:
            raise ValueError(f"{op.describe()}: {error}") from None
        by_key.setdefault(op.key, []).append(op)
        count += 1
    results = [_check_key(key, ops, max_steps) for key, ops in by_key.items()]
    not_ok = tuple(result for result in results if result.verdict != "ok")
    verdicts = {result.verdict for result in not_ok}
    verdict = "violation" if "violation" in verdicts else "unknown" if verdicts else "ok"
    return LinearizabilityResult(verdict, not_ok, len(by_key), count)


def _effect(op: Operation) -> int | None:
    """The operation's effect on the register, or None when it constrains nothing."""
    if op.outcome is Outcome.FAIL:
        return None
    if op.kind is OpKind.PUT:
        return _WRITE
    if op.kind is OpKind.GET:
        return {Outcome.OK: _READ_VALUE, Outcome.NOT_FOUND: _READ_ABSENT}.get(op.outcome)
    return {Outcome.OK: _DELETE_LIVE, Outcome.NOT_FOUND: _READ_ABSENT, Outcome.UNKNOWN: _DELETE_ANY}[op.outcome]


def _intern(value: Any, table: list[Any], numbers: dict[Hashable, int]) -> int:
    """The value's number: the same value (values.py) gets the same one, found by hash
    (comparing with every value seen before was quadratic: 8.9 s for 40,000 PUTs)."""
    key = value_key(value)
    number = numbers.get(key)
    if number is None:
        number = numbers[key] = len(table)
        table.append(value)
    return number


def _check_key(key: str, all_ops: list[Operation], max_steps: int) -> KeyResult:
    ops = [op for op in all_ops if _effect(op) is not None]
    values: list[Any] = []
    numbers: dict[Hashable, int] = {}
    effects = [_effect(op) for op in ops]
    args = [_intern(op.value, values, numbers) if effect in (_WRITE, _READ_VALUE) else ABSENT
            for op, effect in zip(ops, effects)]
    written = {arg for arg, effect in zip(args, effects) if effect == _WRITE}
    for op, arg, effect in zip(ops, args, effects):
        if effect == _READ_VALUE and arg not in written:
            # A cheap certain verdict that the search could otherwise only reach exhaustively.
            # "Before the read ended": the shrunk history shown drops a PUT of the value that
            # began only after the read, and "no PUT wrote" then read as false beside the full
            # history (a tools probe's finding).
            explanation = (f"{op.describe()} read a value that no PUT on {key!r} (ok or unknown) had begun "
                           f"to write by the time the read ended")
            return KeyResult(key, "violation", tuple(all_ops), 0, explanation)
    verdict, steps, explanation = _Search(ops, effects, args, values, max_steps).run()
    return KeyResult(key, verdict, tuple(all_ops), steps, explanation)


class _Search:
    """One key's WGL search over a doubly linked list of events (Porcupine's layout)."""

    def __init__(self, ops: list[Operation], effects: list[int], args: list[int], values: list[Any], max_steps: int):
        self.ops, self.effects, self.args, self.values, self.max_steps = ops, effects, args, values, max_steps
        events = [(op.start, 0, number) for number, op in enumerate(ops)]
        events += [(op.end, 1, number) for number, op in enumerate(ops) if op.end is not None]
        events.sort()  # at equal times calls (0) come before returns (1): touching intervals overlap
        # Entry 0 is the head sentinel, entries 1..n the events, n+1 the tail sentinel.
        size = len(events) + 2
        self.next = list(range(1, size + 1))
        self.prev = list(range(-1, size - 1))
        self.entry_op = [-1] + [number for _, _, number in events] + [-1]
        self.is_call = [False] + [kind == 0 for _, kind, _ in events] + [False]
        self.call_entry = [0] * len(ops)
        self.return_entry: list[int | None] = [None] * len(ops)
        for entry, (_, kind, number) in enumerate(events, start=1):
            if kind == 0:
                self.call_entry[number] = entry
            else:
                self.return_entry[number] = entry
        self.tail = size - 1

    def _unlink(self, entry: int) -> None:
        self.next[self.prev[entry]] = self.next[entry]
        self.prev[self.next[entry]] = self.prev[entry]

    def _relink(self, entry: int) -> None:
        self.next[self.prev[entry]] = entry
        self.prev[self.next[entry]] = entry

    def _apply(self, number: int, state: int) -> int | None:
        """The state after linearizing operation ``number`` in ``state``, or None if it cannot be."""
        effect, arg = self.effects[number], self.args[number]
        if effect == _WRITE:
            return arg
        if effect == _READ_VALUE:
            return state if state == arg else None
        if effect == _READ_ABSENT:
            return state if state == ABSENT else None
        if effect == _DELETE_LIVE:
            return ABSENT if state != ABSENT else None
        return ABSENT  # _DELETE_ANY

    def _first_choice(self, state: int) -> int:
        """The entry to try first in a new configuration: a pending read that
        holds in ``state`` if there is one (it never needs to be undone
        separately, see ``run``), else the earliest pending call."""
        entry = self.next[0]
        while self.is_call[entry]:
            number = self.entry_op[entry]
            if self.effects[number] in _READS and self._apply(number, state) is not None:
                return entry
            entry = self.next[entry]
        return self.next[0]

    def run(self) -> tuple[str, int, str]:
        """WGL's depth-first search, with two prunings. Lowe's memo: a
        (linearized set, state) pair seen before has already failed. And reads
        first: a pending read that holds now can be moved to the front of any
        linearization of the rest (it changes nothing, and no pending operation
        precedes it in real time), so if placing it now fails, the
        configuration before it fails too and nothing else is tried there."""
        required_left = sum(1 for entry in self.return_entry if entry is not None)
        state, linearized, steps = ABSENT, 0, 0
        stack: list[tuple[int, int]] = []  # (operation, state before it)
        seen: set[tuple[int, int]] = set()
        deepest: tuple[list[int], int, int] = ([], ABSENT, -1)  # (prefix, state after it, op that could not follow)
        entry = self._first_choice(state)
        while required_left:
            steps += 1
            if steps > self.max_steps:
                return "unknown", steps - 1, f"gave up after {self.max_steps} search steps ({len(self.ops)} operations)"
            if self.is_call[entry]:
                number = self.entry_op[entry]
                after = self._apply(number, state)
                if after is None:
                    entry = self.next[entry]
                    continue
                if (linearized | 1 << number, after) not in seen:
                    linearized |= 1 << number
                    seen.add((linearized, after))
                    stack.append((number, state))
                    state = after
                    self._unlink(entry)
                    if self.return_entry[number] is not None:
                        self._unlink(self.return_entry[number])
                        required_left -= 1
                    entry = self._first_choice(state)
                    continue
                if self.effects[number] not in _READS:
                    entry = self.next[entry]
                    continue
                # A read that holds, into a configuration that already failed: so does this one.
            elif len(stack) > len(deepest[0]) or deepest[2] < 0:
                # A return event (or the tail): its operation's deadline passed unlinearized.
                deepest = ([number for number, _ in stack], state, self.entry_op[entry])
            while stack:  # undo the latest choice, and the reads placed after it
                number, state = stack.pop()
                linearized &= ~(1 << number)
                if self.return_entry[number] is not None:
                    self._relink(self.return_entry[number])
                    required_left += 1
                self._relink(self.call_entry[number])
                if self.effects[number] not in _READS:
                    entry = self.next[self.call_entry[number]]
                    break
            else:
                return "violation", steps, self._explain(*deepest)
        return "ok", steps, ""

    def _explain(self, prefix: list[int], state: int, blocked: int) -> str:
        held = "absent" if state == ABSENT else f"holding {shown(self.values[state])}"
        lines = [f"longest linearizable prefix ({len(prefix)} of {len(self.ops)} operations that constrain the key):"]
        lines += [f"  {self.ops[number].describe()}" for number in prefix] or ["  (none)"]
        lines.append(f"leaving the key {held}; then this operation cannot take effect before it returned:")
        lines.append(f"  {self.ops[blocked].describe()}" if blocked >= 0 else "  (none)")
        return "\n".join(lines)
