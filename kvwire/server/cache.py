"""A bounded least-recently-used map from key to decoded value."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MISSING = object()


class ValueCache:
    """Keeps GETs of hot keys off SQLite's thread: a hop there costs about 25 µs
    (docs/design.md section 4), a dict lookup well under one."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
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
        if self.max_entries == 0:
            return
        entries = self._entries
        entries[key] = value
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
