"""When two values in a history are the same value, as a node would tell them apart.

Python's ``==`` is not it: ``True == 1 == 1.0``, which the protocol keeps apart
(msgpack's bool, int and float: docs/protocol.md 4.3), so a read of ``true``
after a PUT of ``1`` passed; and ``nan != nan``, so a read of the NaN written
was "a value no PUT wrote". A map's entries are compared in any order, as
``==`` compares dicts (``repr`` did not: a read of ``{"b": 2, "a": 1}`` after
a PUT of ``{"a": 1, "b": 2}`` was a lost write to one check and not to the other).
"""

from __future__ import annotations

from typing import Any, Hashable


def value_key(value: Any) -> Hashable:
    """A hashable stand-in for ``value``: equal exactly when the values are the same."""
    if value is None or isinstance(value, (str, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value.hex())  # NaN equals NaN; -0.0 is not 0.0
    # Loops, not generator expressions: one frame per level of nesting, not two, so a
    # value as deep as a node takes (1,023 levels) fits the raised limit of check's CLI.
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            items.append(value_key(item))
        return ("list", tuple(items))
    if isinstance(value, dict):
        entries = set()
        for name, item in value.items():
            entries.add((value_key(name), value_key(item)))
        return ("map", frozenset(entries))
    return (type(value).__name__, repr(value))


def same_value(a: Any, b: Any) -> bool:
    return value_key(a) == value_key(b)


# Enough to tell values apart in a report; a 1 MiB value printed whole made a
# report of megabyte lines (a checker probe's finding).
SHOWN_CHARS = 200


def shown(value: Any) -> str:
    """``repr(value)``, cut to SHOWN_CHARS with a note of its full length."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(text):,} characters in all)"
