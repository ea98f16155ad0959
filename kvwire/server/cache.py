"""A least-recently-used map from key to value, bounded in entries and in bytes."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from msgspec import Raw

MISSING = object()


def value_bytes(value: Any) -> int:
    """What a cached value counts against the byte bound: a node's values are the
    msgpack bytes a client sent (a Raw); anything else (None, or the simulator's
    values) counts nothing."""
    return len(value) if type(value) is Raw else 0


class ValueCache:
    """Keeps GETs of hot keys off SQLite's thread: a hop there costs about 25 µs
    (docs/design.md section 4), a dict lookup well under one."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        # The entries alone bounded it: 100,000 values of 1 MiB would have been 100 GiB.
        self.max_bytes = max_bytes
        self.bytes = 0  # of the values held (value_bytes)
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any:
        value = self.hit(key)
        if value is MISSING:
            self.misses += 1
        return value

    def hit(self, key: str) -> Any:
        """``get``, counting nothing when the key is not cached: for a caller
        that then goes another way, which counts the miss (NodeCore.cached_value)."""
        entries = self._entries
        value = entries.get(key, MISSING)
        if value is not MISSING:
            entries.move_to_end(key)
            self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        size = value_bytes(value)
        if self.max_entries == 0 or size > self.max_bytes:
            self.discard(key)  # an older value of the key must not stay
            return
        entries = self._entries
        old = entries.get(key, MISSING)
        if old is not MISSING:
            self.bytes -= value_bytes(old)
        entries[key] = value
        entries.move_to_end(key)
        self.bytes += size
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            self.bytes -= value_bytes(entries.popitem(last=False)[1])

    def discard(self, key: str) -> None:
        old = self._entries.pop(key, MISSING)
        if old is not MISSING:
            self.bytes -= value_bytes(old)

    def __len__(self) -> int:
        return len(self._entries)
