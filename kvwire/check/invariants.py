"""Checks beyond linearizability: version tags are unique and grow with real time,
and replicas converge.

A tag ``(counter, node)`` names exactly one write (README, "Version tags"): a
replica keeps whichever version has the higher tag, so two different values
under one tag would let replicas keep different values forever, each sure it
holds the newest; and a write acknowledged with a tag below one already
acknowledged or read is one the replicas will drop as they converge.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .history import Operation, OpKind, Outcome
from .values import same_value, shown, value_key

Version = tuple[int, str]
ReplicaEntry = tuple[Version, bool, Any]  # (version, deleted, value)


def check_tags(operations: Iterable[Operation]) -> list[str]:
    """Every problem with version tags, one sentence each.

    A (key, tag) seen by a PUT ok or a GET ok must always come with the same
    value, and a DELETE ok's tag (a tombstone's) must never come with a value.
    """
    first_value: dict[tuple[str, Version], Operation] = {}
    tombstones: dict[tuple[str, Version], Operation] = {}
    problems = []
    for op in operations:
        if op.version is None or op.outcome is not Outcome.OK:
            continue
        tag = (op.key, op.version)
        if op.kind is OpKind.DELETE:
            tombstones.setdefault(tag, op)
            continue
        earlier = first_value.setdefault(tag, op)
        if earlier is not op and not same_value(earlier.value, op.value):
            problems.append(
                f"key {op.key!r} tag {_tag(op.version)} carried two values: {earlier.describe()} and {op.describe()}"
            )
    for tag, delete in tombstones.items():
        if tag in first_value:
            problems.append(
                f"key {delete.key!r} tag {_tag(tag[1])} is both a tombstone and a value: "
                f"{delete.describe()} and {first_value[tag].describe()}"
            )
    return problems


def check_tag_order(operations: Iterable[Operation]) -> list[str]:
    """Every operation whose tag is below one that ended before it began, one
    sentence each (the first per key).

    Once an operation with a tag has ended (a PUT or DELETE acknowledged, a
    quorum GET answered), a majority holds that tag or a newer one; so a write
    that begins later takes a higher tag, and a read a tag at least as high.
    Linearizability judges values only: a PUT acknowledged at a tag below an
    earlier PUT's, read back at once, passed it, though the replicas keep the
    higher tag and the acknowledged value is gone once they agree (a checker
    probe's finding). Only operations of the history, which are linearizable
    ones: consistency=one reads are judged apart.
    """
    by_key: dict[str, list[Operation]] = {}
    for op in operations:
        if op.version is not None and op.outcome is Outcome.OK:
            by_key.setdefault(op.key, []).append(op)
    problems = []
    for key, ops in by_key.items():
        by_end = sorted(ops, key=lambda op: op.end)
        ended = 0
        highest: Operation | None = None  # the highest tag among the operations ended so far
        for op in sorted(ops, key=lambda op: op.start):
            while ended < len(by_end) and by_end[ended].end < op.start:
                if highest is None or by_end[ended].version > highest.version:
                    highest = by_end[ended]
                ended += 1
            if highest is None:
                continue
            version, floor = op.version, highest.version  # tuples: Operation normalises them
            if version < floor or (version == floor and op.kind is not OpKind.GET):
                needed = "at least" if op.kind is OpKind.GET else "above"
                problems.append(f"key {key!r}: tag {_tag(version)} went backwards: {op.describe()} began after "
                                f"{highest.describe()} ended, so its tag must be {needed} {_tag(floor)}")
                break
    return problems


def check_no_lost_writes(operations: Iterable[Operation]) -> list[str]:
    """Every acknowledged write that later reads do not show, one sentence each.

    Linearizability already implies this; the check says it in plain words.
    For each key, take the acknowledged write (PUT ok, DELETE ok) that ended
    last, provided no other completed write of the key overlaps or follows it.
    A read that starts after every completed write ended must then show that
    write's effect, or the effect of a write whose outcome is unknown (it may
    take effect at any time after it started).
    """
    by_key: dict[str, list[Operation]] = {}
    for op in operations:
        by_key.setdefault(op.key, []).append(op)
    problems = []
    for key, ops in by_key.items():
        writes = [op for op in ops if op.kind is not OpKind.GET and op.outcome in (Outcome.OK, Outcome.NOT_FOUND)]
        acknowledged = [op for op in writes if op.outcome is Outcome.OK]
        if not acknowledged:
            continue
        last = max(acknowledged, key=lambda op: op.end)
        if any(op is not last and op.end >= last.start for op in writes):
            continue  # concurrent with another completed write: left to the linearizability check
        settled = max(op.end for op in writes)
        undecided = [op for op in ops if op.kind is not OpKind.GET and op.outcome is Outcome.UNKNOWN]
        allowed = {_effect(op) for op in [last, *undecided]}
        for read in ops:
            if read.kind is OpKind.GET and read.outcome in (Outcome.OK, Outcome.NOT_FOUND) and read.start > settled:
                seen = _effect(read)
                if seen not in allowed:
                    problems.append(f"key {key!r}: acknowledged write lost: {last.describe()}; "
                                    f"a later read saw something else: {read.describe()}")
                    break
    return problems


def _effect(op: Operation) -> tuple[bool, Any]:
    """What a write leaves, or what a read saw, as (live, the value's key: values.py)."""
    if op.kind is OpKind.DELETE or op.outcome is Outcome.NOT_FOUND:
        return (False, None)
    return (True, value_key(op.value))


def check_converged(states: Mapping[str, Mapping[str, ReplicaEntry]]) -> list[str]:
    """Every key on which the replicas disagree, one sentence each.

    ``states`` maps node id -> key -> (version, deleted, value). A live key one
    node lacks and another holds is a disagreement. A tombstone agrees with no
    entry and with any other tombstone: all read as absent, and tombstone
    garbage collection removes a tombstone from one replica before another.
    """
    every = {node: {key: _normalise(node, key, entry) for key, entry in held.items()} for node, held in states.items()}
    normalised = {node: {key: entry for key, entry in held.items() if not entry[1]} for node, held in every.items()}
    keys: dict[str, None] = {}
    for held in normalised.values():
        keys.update(dict.fromkeys(held))
    problems = []
    for key in keys:
        groups: list[tuple[ReplicaEntry | None, list[str]]] = []  # distinct entries, with the nodes holding each
        for node, held in normalised.items():
            entry = held.get(key)
            for known, nodes in groups:
                if _same_entry(known, entry):
                    nodes.append(node)
                    break
            else:
                groups.append((entry, [node]))
        if len(groups) > 1:
            # A node without a live entry may hold a tombstone: say so, not "no entry".
            described = "; ".join(_describe_group(entry, nodes, {node: every[node].get(key) for node in nodes})
                                  for entry, nodes in groups)
            problems.append(f"replicas disagree on key {key!r}: {described}")
    return problems


def _normalise(node: str, key: str, entry: Any) -> ReplicaEntry:
    # States often come from JSON, where the tag is a two-element list.
    try:
        version, deleted, value = entry
        counter, tag_node = version
        # Exact types: "false" is no boolean, 1.7 no counter (bool() and int() took both).
        if type(counter) is not int or type(tag_node) is not str or type(deleted) is not bool:
            raise TypeError
        return (counter, tag_node), deleted, value
    except (TypeError, ValueError):
        raise ValueError(f"node {node!r} key {key!r}: expected (version, deleted, value), got {entry!r}") from None


def _same_entry(a: ReplicaEntry | None, b: ReplicaEntry | None) -> bool:
    if a is None or b is None:
        return a is b
    if a[0] != b[0] or a[1] != b[1]:
        return False
    return a[1] or same_value(a[2], b[2])


def _tag(version: Version) -> str:
    return f"({version[0]}, {version[1]!r})"


def _describe_group(entry: ReplicaEntry | None, nodes: list[str], held: dict[str, ReplicaEntry | None]) -> str:
    """``nodes: what they hold``; a group without a live entry is told apart by what each
    holds instead, a tombstone (its tag) or nothing: it said "no entry" of a tombstone."""
    if entry is not None:
        return f"{', '.join(nodes)}: {_describe_entry(entry)}"
    by_what: dict[str, list[str]] = {}
    for node in nodes:
        by_what.setdefault(_describe_entry(held[node]), []).append(node)
    return "; ".join(f"{', '.join(group)}: {what}" for what, group in by_what.items())


def _describe_entry(entry: ReplicaEntry | None) -> str:
    if entry is None:
        return "no entry"
    version, deleted, value = entry
    return f"tombstone at tag {_tag(version)}" if deleted else f"{shown(value)} at tag {_tag(version)}"
