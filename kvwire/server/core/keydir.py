"""What this node holds for each key: the one answer, kept in memory.

Like Bitcask's keydir, every key's committed version tag and tombstone flag
live in memory, so version look-ups never touch the disk; values live on disk
behind a bounded cache. ``pending`` holds writes accepted but not yet durable:
they count when a version is chosen or compared (so no tag is minted twice and
no older write overtakes them) but no read sees them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ...protocol.messages import NO_VERSION, Version


# Distinct node names kept as one shared str each: members, and the names a
# misbehaving peer might put in tags, which are then simply not shared.
MAX_NAMES = 1024


# The highest tag counter (or tag floor) a node takes from a peer: far below the
# 2**63 - 1 that SQLite's INTEGER holds, so that minting above it never overflows.
MAX_ACCEPTED_COUNTER = 2**62


class Entry(NamedTuple):
    version: Version
    deleted: bool


def mark_holds(entry: Entry | None, mark: Version) -> bool:
    """Whether a stranded mark at ``mark`` still names this node's copy of its key
    (``entry``, its committed row): a row passed by a newer copy since, or gone (a
    collected tombstone), leaves nothing to stack on (one_trip.py, stranded keys)."""
    return entry is not None and entry.version <= mark


class Copy(NamedTuple):
    """One replica's answer: its version tag, tombstone flag, and value."""

    version: Version
    deleted: bool
    value: Any

    @property
    def absent(self) -> bool:
        """Never written, or deleted."""
        return self.deleted or self.version == NO_VERSION


NO_COPY = Copy(NO_VERSION, False, None)


class PendingWrite(NamedTuple):
    write_id: int
    version: Version
    deleted: bool


class Keydir:
    def __init__(self, committed: dict[str, Entry] | None = None) -> None:
        self.committed: dict[str, Entry] = committed if committed is not None else {}
        # Committed entries that are tombstones, kept current for the metrics.
        self.tombstones = sum(entry.deleted for entry in self.committed.values())
        # key -> writes accepted and not yet durable, oldest first (so newest
        # last). All of them count: if the newest fails on the disk, the one
        # before it is still on its way and its tag must not be minted again.
        self.pending: dict[str, list[PendingWrite]] = {}
        # The highest tag counter accepted for any key: how far ahead a peer's
        # tag may be is measured from it (ServerConfig.max_version_jump).
        self.highest_counter = max((entry.version.counter for entry in self.committed.values()), default=0)
        # Told of every change to a committed entry (old, new; None for none):
        # anti-entropy's bucket digests follow the keydir through it.
        self.watch: Callable[[str, Entry | None, Entry | None], None] | None = None
        self._names: dict[str, str] = {}

    def latest_version(self, key: str) -> Version:
        """The newest version accepted for ``key``, durable or not."""
        pending = self.pending.get(key)
        if pending:
            return pending[-1].version
        entry = self.committed.get(key)
        return entry.version if entry is not None else NO_VERSION

    def latest(self, key: str) -> Copy:
        """The newest version accepted, as a value-less copy (LOOKUP's answer)."""
        pending = self.pending.get(key)
        if pending:
            newest = pending[-1]
            return Copy(newest.version, newest.deleted, None)
        entry = self.committed.get(key)
        return NO_COPY if entry is None else Copy(entry.version, entry.deleted, None)

    def accept(self, key: str, write_id: int, version: Version, deleted: bool) -> None:
        """A write above ``latest_version(key)`` is on its way to the disk."""
        if version.counter > self.highest_counter:
            self.highest_counter = version.counter
        self.pending.setdefault(key, []).append(PendingWrite(write_id, version, deleted))

    def newest_pending(self, key: str) -> PendingWrite | None:
        pending = self.pending.get(key)
        return pending[-1] if pending else None

    def settle(self, key: str, write_id: int, version: Version, deleted: bool, committed: bool) -> bool:
        """A write left the disk queue; True if it is now the committed entry."""
        pending = self.pending.get(key)
        if pending:
            if pending[0].write_id == write_id:
                # The usual case: commits leave the disk queue in the order they
                # entered it, so the oldest settles first. One C memmove, not a
                # Python rebuild of the list: k writes of one key cost O(k) each.
                del pending[0]
            else:
                for index, write in enumerate(pending):
                    if write.write_id == write_id:
                        del pending[index]
                        break
            if not pending:
                del self.pending[key]
        if not committed:
            return False
        current = self.committed.get(key)
        if current is None or version > current.version:
            # Every tag's node part is one of a few names, but each decoded message
            # brings its own str: keep one of each (about 50 bytes a key).
            name = self._names.get(version.node)
            if name is None:
                if len(self._names) < MAX_NAMES:
                    self._names[version.node] = version.node
            elif name is not version.node:
                version = Version(version.counter, name)
            entry = self.committed[key] = Entry(version, deleted)
            self.tombstones += deleted - (current is not None and current.deleted)
            if self.watch is not None:
                self.watch(key, current, entry)
            return True
        return False

    def purge(self, key: str, version: Version) -> bool:
        """Remove ``key``'s entry if it is still the tombstone ``version`` with no write
        on its way (tombstone garbage collection); True if removed."""
        current = self.committed.get(key)
        if key in self.pending or current is None or not current.deleted or current.version != version:
            return False
        del self.committed[key]
        self.tombstones -= 1
        if self.watch is not None:
            self.watch(key, current, None)
        return True

    def pending_count(self) -> int:
        return sum(len(writes) for writes in self.pending.values())

    def __len__(self) -> int:
        return len(self.committed)
